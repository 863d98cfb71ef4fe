"""Gatehouse under load, CI-sized: a reconnect storm of 2,000 token devices after a broker
crash, all of them connected within STORM_BOUND, and a 30 s telemetry soak of 500 devices (MQTT
and HTTP) during which the broker's and the sidecar's memory must stop growing. The figures are
printed (run with -s); the bounds asserted are far above them, so they catch a hang or a leak,
not a slow machine. `make soak` runs the full-sized versions (bench/soak.py)."""
from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from broker_plugin.hardened_broker import LISTEN_BACKLOG

from . import async_mqtt, load_generators
from .devices import stored_values, token_devices
from .metrics_scrape import counts

HANG_GUARD = 120  # seconds
STORM_DEVICES = 2_000
# Every storm device has its CONNACK within this many seconds of the storm's start. Measured here
# (2 cores): 1.8 to 2.4 s on a quiet machine, 3.8 to 5.7 s with the test pinned to one core beside
# a busy loop; the broker's login rate (about 850/s on one core) sets it. 30 s is 5 times the
# loaded figure, yet a storm whose clients wait out TCP's SYN retransmissions (the backlog
# regression below: 15 s for a storm of 3 s, and more when a SYN is dropped again), or whose
# logins queue behind a lock or a timeout, misses it.
STORM_BOUND = 30
SOAK_SECONDS, SOAK_MQTT_DEVICES, SOAK_HTTP_DEVICES = 30, 450, 50
# Memory that stops growing: the median RSS of the soak's last third is at most the middle
# third's x (1 + MEMORY_TOLERANCE) + MEMORY_SLACK_KIB (allocator arenas and caches settle in
# steps). Measured growth in 6 runs: +0.0 to +0.4 MiB (of 67 and 75 MiB), quiet or pinned to one
# core beside a busy loop, so the bound (about 4 MiB; it was 10 % + 4 MiB, about 11 MiB) keeps a
# tenfold margin while a leak of about 1 KiB a message (5,000 messages lie between the thirds'
# medians) now fails it.
MEMORY_TOLERANCE, MEMORY_SLACK_KIB = 0.03, 2 * 1024


def test_2000_devices_reconnecting_at_once_after_a_broker_crash_all_get_in(broker_factory):
    async_mqtt.raise_open_files_limit(4 * STORM_DEVICES)
    broker = broker_factory()
    tokens = token_devices(broker.data_dir, "storm", STORM_DEVICES)

    async def storms() -> tuple[load_generators.Storm, load_generators.Storm, object]:
        first = await asyncio.wait_for(load_generators.connect_all(broker.mqtt_port, tokens), HANG_GUARD)
        # The crash drops every connection at once; they all come back to the restarted broker.
        broker.stop(signal.SIGKILL)
        await first.close()
        restarted = broker_factory(data_dir=broker.data_dir)
        again = await asyncio.wait_for(load_generators.connect_all(restarted.mqtt_port, tokens), HANG_GUARD)
        await again.close()
        return first, again, restarted

    first, again, restarted = asyncio.run(storms())
    print(f"\n{STORM_DEVICES} devices connected at once: cold broker {first.seconds:.1f} s, "
          f"reconnecting after a crash {again.seconds:.1f} s (bound {STORM_BOUND} s)")
    assert first.codes == {0: STORM_DEVICES} and again.codes == {0: STORM_DEVICES}
    assert first.seconds < STORM_BOUND and again.seconds < STORM_BOUND
    logins = counts(restarted.metrics_port, "gatehouse_logins_total")
    assert {labels: n for labels, n in logins.items() if "ACCEPTED" not in labels} == {}


def test_a_30_s_telemetry_soak_of_500_devices_stores_everything_and_memory_stops_growing(broker_factory,
                                                                                         sidecar_factory):
    broker = broker_factory()
    sidecar = sidecar_factory(broker)
    mqtt_devices = token_devices(broker.data_dir, "soak-mqtt", SOAK_MQTT_DEVICES)
    http_devices = token_devices(broker.data_dir, "soak-http", SOAK_HTTP_DEVICES)
    processes = {"broker": broker.process.pid, "sidecar": sidecar.process.pid}

    result = asyncio.run(asyncio.wait_for(load_generators.soak(
        broker.mqtt_port, sidecar.url, mqtt_devices, http_devices, processes, SOAK_SECONDS,
        sample_every=0.5), SOAK_SECONDS + HANG_GUARD))
    print(f"\nsoak: {result.sent} messages sent, {len(result.acknowledged)} acknowledged, {result.refused} refused")
    for curve in result.curves:
        print(curve.describe())
        print(curve.verdict(1 + MEMORY_TOLERANCE, MEMORY_SLACK_KIB))

    assert result.refused == 0 and len(result.acknowledged) == result.sent
    assert result.acknowledged <= stored_values(broker.data_dir, "seq")
    for curve in result.curves:
        assert curve.stops_growing(1 + MEMORY_TOLERANCE, MEMORY_SLACK_KIB), curve.describe()


def test_the_broker_listens_with_a_backlog_for_a_reconnect_storm(broker_factory):
    # Regression: amqtt's listeners had asyncio's default backlog of 100, so in a storm the
    # kernel dropped SYNs and clients waited out TCP's retransmission (a 2,000-device storm
    # took 15 s instead of 3).
    broker = broker_factory()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    for port in (broker.mqtt_port, broker.mqtts_port):
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
        # For a listening socket, ss's Send-Q column is its backlog.
        assert [int(line.split()[2]) for line in listening.stdout.splitlines()] == [min(LISTEN_BACKLOG, somaxconn)]
