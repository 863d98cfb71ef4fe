#!/usr/bin/env python3
"""Retention beside telemetry: the broker prunes a backlog of old history while devices publish.

    .venv/bin/python bench/retention.py            # 500,000 old rows, about 1-2 minutes
    .venv/bin/python bench/retention.py --quick    # 100,000 old rows

A data dir gets `--rows` telemetry history points 40 days old (over 100 devices). Then 20 MQTT
devices each keep one QoS 1 message in flight:
1. baseline: for 10 s against a broker started with `--telemetry-retention-days 0` (nothing
   pruned), the backlog in the database all the same;
2. pruning: against a broker started with the default 30 days, which prunes the backlog at start
   (2,000 rows per transaction, a pause between them), until its log says it is done.
Printed: acks/s and PUBACK latency p50 / p99 / max of both, their ratios (pruning / baseline),
and the pruning's own rate. Figures, never asserted (the issue: no PUBACK waits longer with the
pruning than without by more than a small factor).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)
sys.path.sort(key=lambda entry: entry == str(Path(__file__).resolve().parent))

import results  # bench/results.py, beside this file
from machine import cpu_model, usable_cores  # bench/machine.py, beside this file
from soak import acknowledged_latencies, describe_latencies, percentile_ms  # bench/soak.py

from gatehouse.clock import now_ms
from gatehouse.payloads import parse_telemetry
from gatehouse.registry import Registry
from tests import async_mqtt
from tests.conftest import start_broker
from tests.devices import token_devices

DEVICES = 20
BASELINE_SECONDS = 10.0
OLD_DAYS = 40
PRUNED = "retention: removed"
LATENCY_TARGET_RATIO = 3.0


def old_history(data_dir: Path, rows: int, devices: int = 100) -> None:
    """`rows` history points, OLD_DAYS old, spread over `devices` devices."""
    then = now_ms() - OLD_DAYS * 86_400_000
    per_device = rows // devices
    with Registry.open(data_dir) as registry, registry.batch():
        for d in range(devices):
            device = registry.create_device(f"history-{d}")
            points = [{"ts": then + i, "values": {"t": i}} for i in range(per_device)]
            registry.save_telemetry(device.id, parse_telemetry(json.dumps(points).encode(), max_bytes=1 << 30))


async def latencies(port: int, tokens: dict[str, str], keep_going) -> tuple[list[float], float]:
    connections = {name: await async_mqtt.connect(port, name, token) for name, token in tokens.items()}
    try:
        started = time.perf_counter()
        measured = await acknowledged_latencies(connections, keep_going)
        return measured, time.perf_counter() - started
    finally:
        await asyncio.gather(*(connection.close() for connection in connections.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 old rows")
    parser.add_argument("--rows", type=int, help="old history points (default 500,000, --quick 100,000)")
    results.add_json_option(parser)
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 500_000)
    print(f"Gatehouse retention beside telemetry: Python {platform.python_version()}, {cpu_model()}, "
          f"{usable_cores()} cores; {rows:,} old history points, {DEVICES} devices with one QoS 1 message in flight")
    with tempfile.TemporaryDirectory(prefix="gatehouse-retention-") as tmp:
        data_dir = Path(tmp) / "data"
        Registry.initialise(data_dir).close()
        started = time.perf_counter()
        old_history(data_dir, rows)
        tokens = token_devices(data_dir, "publisher", DEVICES)
        print(f"  backlog written in {time.perf_counter() - started:.1f} s")

        broker = start_broker(data_dir, Path(tmp) / "baseline.log", "--telemetry-retention-days", "0",
                              "--audit-retention-days", "0")
        try:
            deadline = time.perf_counter() + BASELINE_SECONDS
            alone, alone_seconds = asyncio.run(latencies(broker.mqtt_port, tokens,
                                                         lambda: time.perf_counter() < deadline))
        finally:
            broker.stop()

        log = Path(tmp) / "pruning.log"
        broker = start_broker(data_dir, log)  # the default 30 days: the backlog goes at start
        try:
            pruning, pruning_seconds = asyncio.run(latencies(
                broker.mqtt_port, tokens,
                lambda: PRUNED not in log.read_text() and time.perf_counter() - started < 600))
        finally:
            broker.stop()
        with Registry.open(data_dir) as registry:
            left = registry.store.conn.execute("SELECT count(*) FROM telemetry_history WHERE ts < ?",
                                               (now_ms() - 30 * 86_400_000,)).fetchone()[0]
    print(describe_latencies("baseline, no pruning", alone, alone_seconds))
    print(describe_latencies("while pruning", pruning, pruning_seconds))
    print(f"  pruned {rows - left:,} rows in about {pruning_seconds:.1f} s "
          f"({(rows - left) / pruning_seconds:,.0f} rows/s); {left:,} old rows left")
    alone_rate, pruning_rate = len(alone) / alone_seconds, len(pruning) / pruning_seconds
    baseline = "the same telemetry, no pruning"
    beside = f"{DEVICES} devices, while {rows:,} old rows are pruned"
    figures = [results.Figure(f"QoS 1 telemetry acks/s, {beside}", pruning_rate, "acks/s", baseline, alone_rate,
                              pruning_rate / alone_rate),
               results.Figure(f"rows pruned per second, beside {DEVICES} devices' telemetry",
                              (rows - left) / pruning_seconds, "rows/s")]
    latency = {"p50": (percentile_ms(pruning, 50), percentile_ms(alone, 50)),
               "p99": (percentile_ms(pruning, 99), percentile_ms(alone, 99)),
               "max": (1000 * max(pruning), 1000 * max(alone))}
    for name, (value, base) in latency.items():
        # The "small factor" for the slowest PUBACKs: the same 3x as an import's.
        target = {"target": f"<= {LATENCY_TARGET_RATIO:.2f}", "met": value / base <= LATENCY_TARGET_RATIO} \
            if name != "p50" else {}
        figures.append(results.Figure(f"PUBACK latency {name}, {beside}", value, "ms", baseline, base,
                                      value / base, **target))
    for figure in figures:
        if figure.ratio is not None:
            print(f"  {figure.measurement}: ratio {figure.ratio:.2f}")
    results.write(args.json, f"retention (bench/retention.py: {rows:,} old rows)", figures)


if __name__ == "__main__":
    main()
