#!/usr/bin/env python3
"""Load over time through a real broker and sidecar: a reconnect storm, a memory soak, and
telemetry beside a bulk import.

    .venv/bin/python bench/soak.py            # about 12 minutes (make soak)
    .venv/bin/python bench/soak.py --quick    # about 1 minute

1. Reconnect storm: N token devices (2,000; --quick 500) connect at once; the broker is killed
   (SIGKILL) under them and restarted, and they all reconnect at once to the fresh process. Printed:
   seconds until the last CONNACK, each time, against a same-run baseline: the same N logins
   made 20 at a time (a steady stream), as rate and time. Every login must be accepted. Target:
   a storm takes at most twice as long as the steady stream (STORM_TARGET_RATIO).
2. Soak: 450 MQTT devices (QoS 1) and 50 HTTP devices each send one telemetry message a
   second for 10 minutes (--quick 30 s; --seconds). The broker's and the sidecar's RSS
   (VmRSS from /proc/PID/status) is sampled every second from before the first message; the
   curve is printed, and the verdict: the median of the last third of the run against the
   middle third's, whose ratio must be at most 1.10 (MEMORY_GROWTH_TARGET) for memory that
   stops growing. Each process's idle RSS before the load is printed too. Also printed: messages
   sent, acknowledged, refused, and how many acknowledged ones are missing from SQLite afterwards
   (must be 0), and each process's CPU.
3. Telemetry beside a bulk import: 20 MQTT devices each keep one QoS 1 message in flight, first
   for 5 s alone (the baseline), then while `gatehouse device import` adds 20,000 devices
   (--quick 5,000) to the same database. Printed for both: acknowledgements/s and PUBACK
   latency p50 / p99 / max; and the import's own time. Each import batch (500 rows) holds SQLite's
   write lock, so the broker's group commits wait between batches.

Figures are printed, never asserted (a target not met is reported, not an error); `--json FILE`
also writes the headline figures for bench/report.py (bench/results.py). The load generator is
this process (asyncio, raw MQTT sockets and aiohttp); the broker and the sidecar are
`gatehouse broker` and `gatehouse sidecar` subprocesses on free ports and a temporary data dir,
removed on exit, errors included.
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Benchmark the working tree this file belongs to, installed or not.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)
# This directory goes last: bench/http.py would shadow the standard library's `http` (aiohttp imports it).
sys.path.sort(key=lambda entry: entry == str(Path(__file__).resolve().parent))

import results  # bench/results.py, beside this file
from machine import (  # bench/machine.py, beside this file
    cpu_model,
    cpu_seconds,
    usable_cores,
)

from tests import async_mqtt, load_generators
from tests.conftest import CHILD_ENV, start_broker, start_sidecar
from tests.devices import stored_values, token_devices

STEADY_CONCURRENCY = 20
# A storm is the steady stream's logins all at once: the broker's login rate bounds both, so a
# storm should take about as long (0.55 to 1.21 times as long in 8 storms of 2,000 here). A client
# whose SYN the kernel drops twice gets in only at TCP's third attempt, 7 s after its first (the
# listen-backlog regression made a 3 s storm take 15 s): about 3 times a 2.5 s baseline, as is a
# stall on a lock. One dropped SYN (1 s late) is within a shared machine's noise, which 2 leaves.
STORM_TARGET_RATIO = 2.0
# Telemetry beside an import, against the same telemetry alone (issue 15).
IMPORT_RATE_TARGET = 0.7
IMPORT_P99_TARGET = 3.0
# The soak's last third may sit at most 10 % above its middle third (median RSS): allocator arenas
# and SQLite's page cache settle in steps, while a leak of 80 bytes a message already adds 10 %
# to a 75 MiB broker over the 100,000 messages between the two thirds of the 10-minute run.
MEMORY_GROWTH_TARGET = 1.10


async def steady_logins(port: int, tokens: dict[str, str]) -> tuple[int, float]:
    """The same logins `STEADY_CONCURRENCY` at a time, each connection closed after its CONNACK:
    (accepted, seconds)."""
    pending = iter(tokens.items())
    started = time.perf_counter()

    async def worker() -> int:
        accepted = 0
        for name, token in pending:
            connection = await async_mqtt.connect(port, name, token)
            await connection.close()
            accepted += connection.return_code == 0
        return accepted

    counts = await asyncio.gather(*(worker() for _ in range(STEADY_CONCURRENCY)))
    return sum(counts), time.perf_counter() - started


def reconnect_storm(root: Path, devices: int) -> list[results.Figure]:
    print(f"\n1. Reconnect storm: {devices:,} token devices")
    broker = start_broker(root / "storm", root / "storm-broker-1.log")
    restarted = None
    try:
        tokens = token_devices(broker.data_dir, "storm", devices)

        async def run():
            accepted, steady_seconds = await steady_logins(broker.mqtt_port, tokens)
            cold = await load_generators.connect_all(broker.mqtt_port, tokens)
            broker.stop(signal.SIGKILL)
            await cold.close()
            nonlocal restarted
            restarted = start_broker(broker.data_dir, root / "storm-broker-2.log")
            again = await load_generators.connect_all(restarted.mqtt_port, tokens)
            await again.close()
            return accepted, steady_seconds, cold, again

        accepted, steady_seconds, cold, again = asyncio.run(run())
        baseline = f"the same {devices:,} logins, {STEADY_CONCURRENCY} at a time"
        print(f"  baseline: {devices:,} logins {STEADY_CONCURRENCY} at a time   {steady_seconds:6.2f} s  "
              f"({devices / steady_seconds:,.0f} logins/s, {accepted:,} accepted)")
        figures = []
        for label, storm in (("all at once", cold), ("all at once after a SIGKILL+restart", again)):
            refused = {code: n for code, n in storm.codes.items() if code != 0}
            ratio = storm.seconds / steady_seconds
            met = ratio <= STORM_TARGET_RATIO and not refused
            print(f"  {label:34} {storm.seconds:6.2f} s  ({devices / storm.seconds:,.0f} logins/s, "
                  f"{storm.codes[0]:,} accepted, refused by CONNACK code: {refused or 'none'}; "
                  f"storm / baseline time {ratio:.2f}, target <= {STORM_TARGET_RATIO:.2f}: {'met' if met else 'NOT MET'})")
            figures.append(results.Figure(
                f"reconnect storm: {devices:,} devices {label}, seconds until all connected", storm.seconds, "s",
                baseline, steady_seconds, ratio, f"<= {STORM_TARGET_RATIO:.2f}", met))
        failed = (devices - accepted) + sum(devices - storm.codes[0] for storm in (cold, again))
        figures.append(results.Figure(f"failed legitimate logins (baseline and both storms, {3 * devices:,} in all)",
                                      failed, "logins", target="= 0", met=failed == 0))
        return figures
    finally:
        for running in (broker, restarted):
            if running is not None and running.process.poll() is None:
                running.stop()


def soak(root: Path, seconds: float, mqtt_count: int, http_count: int) -> list[results.Figure]:
    print(f"\n2. Soak: {mqtt_count} MQTT (QoS 1) + {http_count} HTTP devices, one message a second each, "
          f"{seconds:g} s")
    broker = start_broker(root / "soak", root / "soak-broker.log")
    sidecar = None
    try:
        sidecar = start_sidecar(broker, root / "soak-sidecar.log")
        mqtt_devices = token_devices(broker.data_dir, "soak-mqtt", mqtt_count)
        http_devices = token_devices(broker.data_dir, "soak-http", http_count)
        processes = {"broker": broker.process.pid, "sidecar": sidecar.process.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        result = asyncio.run(load_generators.soak(broker.mqtt_port, sidecar.url, mqtt_devices, http_devices,
                                                  processes, seconds))
        wall = time.perf_counter() - started
        lost = len(result.acknowledged - stored_values(broker.data_dir, "seq"))
        print(f"  messages: {result.sent:,} sent, {len(result.acknowledged):,} acknowledged, {result.refused:,} refused, "
              f"{lost:,} acknowledged but missing from SQLite; {len(result.acknowledged) / wall:,.0f} stored/s")
        figures = [results.Figure(f"soak: acknowledged telemetry missing from SQLite (of {len(result.acknowledged):,})",
                                  lost, "messages", target="= 0", met=lost == 0),
                   results.Figure(f"soak: telemetry refused (of {result.sent:,} sent)", result.refused, "messages",
                                  target="= 0", met=result.refused == 0)]
        for curve in result.curves:
            cpu = cpu_seconds(processes[curve.name]) - cpu_before[curve.name]
            idle = curve.samples[0][1]
            print(f"  {curve.describe(points=20)}")
            print(f"  {'':8} baseline (idle, before the load) {idle / 1024:.1f} MiB; last third / idle "
                  f"{curve.third(2) / idle:.2f}; CPU {100 * cpu / wall:.0f} % of a core")
        for curve in result.curves:
            print(f"  verdict: {curve.verdict(MEMORY_GROWTH_TARGET)}")
            figures.append(results.Figure(
                f"soak memory: {curve.name} RSS, median of the last third of {seconds:g} s "
                f"({(curve.third(2) - curve.third(1)) / 1024:+.1f} MiB)", curve.third(2) / 1024, "MiB",
                "median of the middle third", curve.third(1) / 1024, curve.third(2) / curve.third(1),
                f"<= {MEMORY_GROWTH_TARGET:.2f}", curve.stops_growing(MEMORY_GROWTH_TARGET)))
        return figures
    finally:
        for running in (sidecar, broker):
            if running is not None and running.process.poll() is None:
                running.stop()


async def acknowledged_latencies(connections: dict[str, async_mqtt.Connection], keep_going) -> list[float]:
    """Each connection keeps one QoS 1 telemetry message in flight while `keep_going()`: the
    seconds each took to its PUBACK."""
    latencies: list[float] = []
    ts_base = int(time.time() * 1000)

    async def device(connection: async_mqtt.Connection) -> None:
        seq = 0
        while keep_going():
            seq += 1
            sent = time.perf_counter()
            if not await connection.publish_qos1(load_generators.TELEMETRY,
                                                 load_generators.telemetry_payload(ts_base, seq)):
                raise RuntimeError("a QoS 1 message was not acknowledged")
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(device(connection) for connection in connections.values()))
    return latencies


def percentile_ms(latencies: list[float], percentile: int) -> float:
    return 1000 * statistics.quantiles(latencies, n=100)[percentile - 1]


def describe_latencies(label: str, latencies: list[float], seconds: float) -> str:
    return (f"  {label:28} {len(latencies) / seconds:7,.0f} acks/s  PUBACK latency p50 "
            f"{percentile_ms(latencies, 50):7.1f} ms, p99 {percentile_ms(latencies, 99):7.1f} ms, "
            f"max {1000 * max(latencies):7.1f} ms")


def telemetry_beside_an_import(root: Path, rows: int, devices: int = 20,
                               baseline_seconds: float = 5) -> list[results.Figure]:
    print(f"\n3. QoS 1 telemetry from {devices} devices beside a {rows:,}-row `gatehouse device import`")
    broker = start_broker(root / "import", root / "import-broker.log")
    try:
        tokens = token_devices(broker.data_dir, "beside-import", devices)
        text, _ = load_generators.import_csv(rows)
        (root / "import.csv").write_text(text)

        async def run():
            connections = {}
            importer = None
            for name, token in tokens.items():
                connections[name] = await async_mqtt.connect(broker.mqtt_port, name, token)
            try:
                started = time.perf_counter()
                alone = await acknowledged_latencies(
                    connections, lambda: time.perf_counter() - started < baseline_seconds)
                alone_seconds = time.perf_counter() - started
                importer = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), "device", "import",
                    str(root / "import.csv"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV)
                started = time.perf_counter()
                during = await acknowledged_latencies(connections, lambda: importer.returncode is None)
                return alone, alone_seconds, during, time.perf_counter() - started, await importer.wait()
            finally:
                if importer is not None and importer.returncode is None:
                    importer.kill()
                    await importer.wait()
                await asyncio.gather(*(connection.close() for connection in connections.values()))

        alone, alone_seconds, during, import_seconds, import_status = asyncio.run(run())
        print(describe_latencies("baseline, no import", alone, alone_seconds))
        print(describe_latencies("during the import", during, import_seconds))
        during_rate, alone_rate = len(during) / import_seconds, len(alone) / alone_seconds
        print(f"  the import took {import_seconds:.1f} s ({rows / import_seconds:,.0f} rows/s, exit status "
              f"{import_status}); acks/s during / baseline {during_rate / alone_rate:.2f}")
        beside = f"{devices} devices, during a {rows:,}-row import"
        baseline = "the same telemetry, no import"
        rate_ratio = during_rate / alone_rate
        figures = [results.Figure(f"QoS 1 telemetry acks/s, {beside}", during_rate, "acks/s", baseline, alone_rate,
                                  rate_ratio, f">= {IMPORT_RATE_TARGET:.2f}", rate_ratio >= IMPORT_RATE_TARGET)]
        for percentile in (50, 99):
            value, base = percentile_ms(during, percentile), percentile_ms(alone, percentile)
            target = {"target": f"<= {IMPORT_P99_TARGET:.2f}", "met": value / base <= IMPORT_P99_TARGET} \
                if percentile == 99 else {}
            figures.append(results.Figure(f"PUBACK latency p{percentile}, {beside}", value, "ms", baseline, base,
                                          value / base, **target))
        return figures
    finally:
        if broker.process.poll() is None:
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500-device storm, 30 s soak")
    parser.add_argument("--seconds", type=float, help="soak duration (default 600, --quick 30)")
    parser.add_argument("--storm-devices", type=int, help="reconnect storm size (default 2,000, --quick 500)")
    parser.add_argument("--only", choices=("storm", "soak", "import"), action="append",
                        help="run only this part (repeatable); by default all three")
    results.add_json_option(parser)
    args = parser.parse_args()
    parts = args.only or ("storm", "soak", "import")
    seconds = args.seconds or (30 if args.quick else 600)
    storm_devices = args.storm_devices or (500 if args.quick else 2_000)
    import_rows = 5_000 if args.quick else 20_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async_mqtt.raise_open_files_limit(4 * storm_devices)
    print(f"Gatehouse soak: Python {platform.python_version()}, {cpu_model()}, {usable_cores()} cores, "
          f"open-files limit {soft} (raised to {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, hard {hard})")
    with tempfile.TemporaryDirectory(prefix="gatehouse-soak-") as tmp:
        figures = reconnect_storm(Path(tmp), storm_devices) if "storm" in parts else []
        if "soak" in parts:
            figures += soak(Path(tmp), seconds, 450, 50)
        if "import" in parts:
            figures += telemetry_beside_an_import(Path(tmp), import_rows)
    described = {"storm": f"{storm_devices:,}-device storm", "soak": f"{seconds:g} s soak",
                 "import": f"{import_rows:,}-row import"}
    results.write(args.json, f"soak (bench/soak.py: {', '.join(described[part] for part in parts)})", figures)


if __name__ == "__main__":
    main()
