"""Load generators shared by the tests (CI-sized) and bench/soak.py (full-sized): a reconnect
storm of token devices, a telemetry soak that samples the processes' memory, and bulk-import files."""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from . import async_mqtt

TELEMETRY = "v1/devices/me/telemetry"


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- bulk import -------------------------------------------------------------------------------

def import_csv(rows: int) -> tuple[str, dict[str, str]]:
    """A bulk-import file in the CLI's header convention, and its devices: name -> token."""
    tokens = {f"imported-{i:05}": f"IMPORT-TOKEN-{i:05}" for i in range(rows)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["NAME", "TYPE", "ACCESS_TOKEN", "SHARED_ATTRIBUTE:model", "TIMESERIES:temperature"])
    for i, (name, token) in enumerate(tokens.items()):
        writer.writerow([name, "imported", token, f"M{i % 7}", 20 + i % 10])
    return out.getvalue(), tokens


# --- reconnect storm ---------------------------------------------------------------------------

@dataclass
class Storm:
    """Every device's CONNACK return code (-1: none) and the seconds from the first connection
    attempt to the last CONNACK; `connections` stay open until closed."""

    codes: Counter
    seconds: float
    connections: list[async_mqtt.Connection]

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self.connections))


async def connect_all(port: int, tokens: dict[str, str]) -> Storm:
    """All devices (client id = name, username = token) connect at once."""
    started = time.perf_counter()

    async def one(name: str, token: str) -> async_mqtt.Connection:
        return await async_mqtt.connect(port, name, token)

    connections = await asyncio.gather(*(one(name, token) for name, token in tokens.items()))
    seconds = time.perf_counter() - started
    return Storm(Counter(connection.return_code for connection in connections), seconds, list(connections))


# --- soak --------------------------------------------------------------------------------------

@dataclass
class MemoryCurve:
    """(seconds since the start, KiB) samples of one process's RSS."""

    name: str
    samples: list[tuple[float, int]] = field(default_factory=list)

    def third(self, index: int) -> float:
        """Median RSS (KiB) of the first (0), middle (1) or last (2) third of the run."""
        n = len(self.samples)
        return statistics.median(kib for _, kib in self.samples[index * n // 3:(index + 1) * n // 3])

    def growth(self) -> float:
        """How much the last third's median exceeds the middle third's, as a fraction."""
        return self.third(2) / self.third(1) - 1

    def stops_growing(self, ratio: float, slack_kib: float = 0) -> bool:
        """The last third's median is at most `ratio` times the middle third's, plus `slack_kib`.
        The first third is left out: it holds the start-up and the load's ramp."""
        return self.third(2) <= self.third(1) * ratio + slack_kib

    def verdict(self, ratio: float, slack_kib: float = 0) -> str:
        bound = f"<= middle x {ratio:.2f}" + (f" + {slack_kib / 1024:g} MiB" if slack_kib else "")
        return (f"{self.name} memory: last third {self.third(2) / 1024:.1f} MiB vs middle third "
                f"{self.third(1) / 1024:.1f} MiB: {(self.third(2) - self.third(1)) / 1024:+.1f} MiB "
                f"({100 * self.growth():+.1f} %, ratio {self.third(2) / self.third(1):.3f}); target {bound}: "
                + ("stops growing" if self.stops_growing(ratio, slack_kib) else "STILL GROWING"))

    def describe(self, points: int = 10) -> str:
        step = max(1, len(self.samples) // points)
        curve = "  ".join(f"{t:5.0f}s {kib / 1024:6.1f}" for t, kib in self.samples[::step])
        return (f"{self.name:8} RSS MiB: {curve}\n{'':9}medians by third: "
                + " / ".join(f"{self.third(i) / 1024:.1f}" for i in range(3))
                + f" MiB; last vs middle third {100 * self.growth():+.1f} %")


@dataclass
class Soak:
    sent: int = 0
    acknowledged: set[tuple[str, int]] = field(default_factory=set)  # (device name, seq)
    refused: int = 0  # an HTTP answer other than 200 or a QoS 1 message without PUBACK
    curves: list[MemoryCurve] = field(default_factory=list)


def telemetry_payload(ts_base: int, seq: int) -> str:
    # One history row per message (its own ts), so each acknowledged message can be found.
    return json.dumps({"ts": ts_base + seq, "values": {"seq": seq, "temperature": 20 + seq % 10}})


async def soak(mqtt_port: int, sidecar_url: str, mqtt_devices: dict[str, str], http_devices: dict[str, str],
               processes: dict[str, int], seconds: float, interval: float = 1.0, sample_every: float = 1.0) -> Soak:
    """Every device sends one telemetry message per `interval` for `seconds` (MQTT QoS 1 or HTTP
    POST), starting at a random point of the first interval; the RSS of each named process
    (name -> pid) is sampled every `sample_every` seconds."""
    result = Soak(curves=[MemoryCurve(name) for name in processes])
    ts_base = int(time.time() * 1000)
    started = time.perf_counter()
    deadline = started + seconds

    async def paced(send_one) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        next_at = time.perf_counter()
        for seq in range(1, 1 << 30):
            if time.perf_counter() >= deadline:
                return
            result.sent += 1
            await send_one(seq)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def mqtt_device(name: str, token: str) -> None:
        connection = await async_mqtt.connect(mqtt_port, name, token)
        if connection.return_code != 0:
            raise RuntimeError(f"{name} refused with CONNACK {connection.return_code}")

        async def send_one(seq: int) -> None:
            acknowledged = await connection.publish_qos1(TELEMETRY, telemetry_payload(ts_base, seq))
            if acknowledged:
                result.acknowledged.add((name, seq))
            else:
                result.refused += 1

        try:
            await paced(send_one)
        finally:
            await connection.close()

    async def http_device(session: aiohttp.ClientSession, name: str, token: str) -> None:
        async def send_one(seq: int) -> None:
            try:
                async with session.post(f"{sidecar_url}/api/v1/{token}/telemetry",
                                        data=telemetry_payload(ts_base, seq),
                                        headers={"Content-Type": "application/json"}) as response:
                    stored = response.status == 200
            except aiohttp.ClientError:
                stored = False
            if stored:
                result.acknowledged.add((name, seq))
            else:
                result.refused += 1

        await paced(send_one)

    async def sample_memory() -> None:
        while True:
            now = time.perf_counter() - started
            for curve, pid in zip(result.curves, processes.values()):
                curve.samples.append((now, rss_kib(pid)))
            await asyncio.sleep(sample_every)

    sampler = asyncio.create_task(sample_memory())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=len(http_devices) or 1)) as session:
            await asyncio.gather(*(mqtt_device(name, token) for name, token in mqtt_devices.items()),
                                 *(http_device(session, name, token) for name, token in http_devices.items()))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return result
