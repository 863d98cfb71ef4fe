#!/usr/bin/env python3
"""HTTP benchmark: the Gatehouse sidecar's device API against a bare Flask endpoint under waitress.

    .venv/bin/python bench/http.py            # about 2 minutes
    .venv/bin/python bench/http.py --quick    # about 30 s

The issue's target: the device API keeps at least half the throughput of a bare Flask endpoint
served the same way, i.e. Gatehouse / bare >= 0.50 in requests per second. Figures are printed,
never asserted; the baseline is measured in the same run on the same machine, and measurements
alternate between the two servers (best of --rounds each).

Three processes are started on free ports, as in bench/mqtt.py:

- the Gatehouse broker, `python -m gatehouse --data-dir TMP broker --mqtt-port 0 --mqtts-port 0`,
  on a data dir prepared with the library (token devices, an ALLOW_CREATE_NEW_DEVICES profile,
  an application account): bench/mqtt.py's `prepare_data_dir`;
- the sidecar, `python -m gatehouse --data-dir TMP sidecar --http-port 0 --broker-port PORT
  --threads T`, measured once its MQTT link to that broker is up, so that every telemetry
  request it accepts is also published;
- the baseline, `bench/http.py --serve-bare T`: a Flask app with one POST endpoint (any path)
  that reads the body and answers 200 with an empty body, under waitress with the same T threads
  (the sidecar's default thread count unless --threads says otherwise).

The load generator is this process: C concurrent HTTP/1.1 clients on asyncio (aiohttp), each on
its own keep-alive connection, each sending its next request as soon as the previous answer is
in. Every client makes one request before the clock starts (connection set-up is not measured).

1. Telemetry: client i POSTs {"temperature":..,"humidity":..,"seq":n} to
   /api/v1/{token i}/telemetry, one token device per client; only a 200 counts. Gatehouse
   stores each message and publishes it to gatehouse/devices/{id}/telemetry through the broker,
   where an application account (subscribed at QoS 1) counts them: after the run every message
   answered 200 must have reached it, and every device's latest stored `seq` must be the last
   one answered 200. The baseline gets the same paths and bodies.
2. Provisioning: POST /api/v1/provision with a unique device name each, and the profile's key
   and secret; only {"status": "SUCCESS", ...} counts (a new token device each time). The
   baseline gets the same paths and bodies and answers 200 without looking at them.

Beside each rate: p50 and p99 latency of the requests that counted, the server process's CPU
(from /proc/PID/stat, all threads; for Gatehouse the broker's CPU too) and the load generator's
own CPU. A server near 100 % is GIL-bound (waitress runs Python threads); a load generator near
100 % means the rate is a floor. On a 2-core machine they share the cores, so the baseline is
the one that suffers most from the load generator's share. Also beside each rate: the server's
context switches per request (/proc/PID/task/*/status, all threads), which is where a threaded
Python server's time goes once the GIL is the limit. Each time a thread blocks (a socket, an
SQLite statement, a lock) another one takes the GIL. The bare endpoint hands a request from
waitress's loop to a worker and back. Gatehouse also hands it to the group-commit writer and
back, and to paho's network thread (PUBLISH, then PUBACK). `perf` on the sidecar at full load
(late 2026, this machine's kind) put 26 % of its CPU in the kernel's task switching, nearly
all of it futex waits on the GIL's mutex and condition.

Why aiohttp and not raw sockets (as bench/mqtt.py uses): measured against the bare endpoint
(64 threads, 2 cores), aiohttp reached 3,700-4,000 requests/s at 16-64 clients using about 60 %
of a core, a raw-socket asyncio client 3,900-4,300/s at about 26 %: the server process was at
100 % of a core in both, so the client is not the limit, though the baseline reads up to ~8 %
lower than it would with a lighter client (which flatters the ratio by as much).

Subprocesses and temporary files are removed on exit, errors and SIGTERM included.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This directory goes after the standard library's: this file is named like its `http` package,
# which aiohttp, Flask and amqtt import. bench/mqtt.py adds the project root.
sys.path.sort(key=lambda entry: entry == str(Path(__file__).resolve().parent))

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import SimpleNamespace

import aiohttp
import results  # bench/results.py, beside this file
from machine import (  # bench/machine.py, beside this file
    cpu_model,
    cpu_seconds,
    usable_cores,
)
from mqtt import (  # bench/mqtt.py, beside this file: also puts the project root on sys.path
    APP_FILTER,
    KEEPALIVE,
    PROVISION_KEY,
    PROVISION_SECRET,
    PUBLISH,
    Endpoint,
    Fleet,
    Meter,
    Processes,
    check_stored,
    open_mqtt,
    parse_publish,
    prepare_data_dir,
    puback_packet,
    read_packet,
    settle,
    subscribe,
)

perf_counter = time.perf_counter

TARGET_RATIO = 0.5
OP_TIMEOUT = 15.0
LISTENING = re.compile(r"^HTTP  listening on \S+:(\d+)$", re.MULTILINE)
LINK_UP = "connected to the broker"  # the sidecar's log line once its MQTT link is up
HEADERS = {"Content-Type": "application/json"}


# --- the servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A running HTTP server: where to send requests and which process to watch."""

    name: str
    pid: int
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Servers(Processes):
    """bench/mqtt.py's process groups (all killed on exit), plus HTTP servers."""

    def start_http(self, name: str, argv: list[str], log_path: Path, *, wait_for: tuple[str, ...] = (),
                   timeout: float = 30) -> Server:
        """Start a server that prints `HTTP  listening on HOST:PORT`; return once it has, and once
        its log shows every line of `wait_for`."""
        with open(log_path, "w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._running.append(process)
        deadline = time.monotonic() + timeout
        while True:
            text = log_path.read_text()
            listening = LISTENING.search(text)
            if listening and all(line in text for line in wait_for):
                return Server(name, process.pid, int(listening[1]))
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready in {timeout:g} s (waited for {wait_for}):\n{text}")
            time.sleep(0.05)


def serve_bare(threads: int) -> int:
    """The baseline server process (`bench/http.py --serve-bare THREADS`): one Flask endpoint
    that reads the body and answers 200, under waitress as the sidecar runs it; prints its port
    like `gatehouse sidecar` does, stopped by SIGTERM."""
    import logging

    import waitress
    from flask import Flask, request

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # as the sidecar: "task queue depth"
    app = Flask("bare")

    @app.post("/<path:path>")
    def accept(path: str) -> str:
        request.get_data()
        return ""

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads, ident="bare",
                                    clear_untrusted_proxy_headers=True)
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        server.close()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print(f"HTTP  listening on 127.0.0.1:{server.effective_port}", flush=True)
    try:
        server.run()
    except OSError:
        if not stopping:
            raise
    return 0


# --- the load generator ---------------------------------------------------------------------


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of a process so far, all its threads (a
    thread's count stays with it: one that ended meanwhile is not counted)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError), open(task / "status", encoding="ascii") as f:
            total += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
    return total


@dataclass
class HttpSample:
    """What one measurement saw."""

    ok: int
    failed: int
    seconds: float
    server_cpu: float  # CPU seconds of the server process
    client_cpu: float  # CPU seconds of this process
    latencies: list[float]  # seconds, of the requests that counted
    broker_cpu: float | None = None  # Gatehouse: CPU seconds of the broker
    server_switches: int = 0  # context switches of the server process's threads
    warmup_ok: int = 0  # requests that counted before the clock started
    last_ok_seq: dict[int, int] = field(default_factory=dict)  # client -> seq of its last request that counted
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status of a request that did not count -> how many
    errors: dict[str, int] = field(default_factory=dict)  # exception name -> how many
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: int) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return 1000 * statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]

    def cpu_share(self, cpu_seconds_used: float | None) -> str:
        return "-" if cpu_seconds_used is None else f"{100 * cpu_seconds_used / self.seconds:.0f} %"

    @property
    def switches_per_request(self) -> float:
        return self.server_switches / self.ok if self.ok else float("nan")

    def describe(self) -> str:
        text = (f"{self.rate:8,.0f}/s  ({self.ok:,} ok, {self.failed:,} failed, {self.seconds:.2f} s; p50 "
                f"{self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms; server CPU "
                f"{self.cpu_share(self.server_cpu)}"
                + ("" if self.broker_cpu is None else f", broker CPU {self.cpu_share(self.broker_cpu)}")
                + f", load generator CPU {self.cpu_share(self.client_cpu)}; server context switches per "
                f"request {self.switches_per_request:.1f})")
        failures = [f"HTTP {status} x {count:,}" for status, count in sorted(self.statuses.items())]
        failures += [f"{name} x {count:,}" for name, count in sorted(self.errors.items())]
        return "  ".join([text, *(["failures: " + ", ".join(failures)] if failures else []), *self.notes])


@dataclass(frozen=True)
class Workload:
    """What client `i` sends as its `n`-th request (n = 0 is the warm-up), and what counts."""

    path: Callable[[int], str]
    body: Callable[[int, int], bytes]
    counts: Callable[[int, bytes], bool]  # (status, response body) -> counts


def telemetry_body(n: int) -> bytes:
    return b'{"temperature":%.1f,"humidity":%d,"seq":%d}' % (15 + n % 150 / 10, 30 + n % 40, n)


def is_ok(status: int, body: bytes) -> bool:
    return status == 200


def is_provisioned(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("status") == "SUCCESS" and bool(answer.get("credentialsValue"))


def telemetry_workload(tokens: list[str]) -> Workload:
    return Workload(lambda i: f"/api/v1/{tokens[i % len(tokens)]}/telemetry", lambda i, n: telemetry_body(n), is_ok)


def provisioning_workload(check: bool) -> Workload:
    run = secrets.token_hex(4)

    def body(i: int, n: int) -> bytes:
        return json.dumps({"deviceName": f"bench-http-prov-{run}-{i}-{n}", "provisionDeviceKey": PROVISION_KEY,
                           "provisionDeviceSecret": PROVISION_SECRET}).encode()

    return Workload(lambda i: "/api/v1/provision", body, is_provisioned if check else is_ok)


async def http_rate(server: Server, workload: Workload, seconds: float, concurrency: int, *,
                    broker_pid: int | None = None) -> HttpSample:
    """`concurrency` clients, each on its own keep-alive connection, send requests one after
    the other until `seconds` have passed (after one warm-up request each)."""
    await settle(server)
    start = asyncio.Event()
    deadline = 0.0
    warmed = 0  # clients whose warm-up request is done, counted or not
    sample = HttpSample(0, 0, 0.0, 0.0, 0.0, [])

    async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int | str:
        """The status of a request that did not count, an exception's name, or 0."""
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                payload = await response.read()
                return 0 if workload.counts(response.status, payload) else response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            return type(e).__name__

    async def client(i: int) -> None:
        url = server.base_url + workload.path(i)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                         cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=OP_TIMEOUT)) as session:
            nonlocal warmed
            failure = await post(session, url, workload.body(i, 0))
            sample.warmup_ok += failure == 0
            warmed += 1
            await start.wait()
            n = 0
            while perf_counter() < deadline:
                n += 1
                began = perf_counter()
                failure = await post(session, url, workload.body(i, n))
                if failure == 0:
                    sample.latencies.append(perf_counter() - began)
                    sample.last_ok_seq[i] = n
                elif isinstance(failure, int):
                    sample.statuses[failure] = sample.statuses.get(failure, 0) + 1
                else:
                    sample.errors[failure] = sample.errors.get(failure, 0) + 1

    clients = [asyncio.create_task(client(i)) for i in range(concurrency)]
    while warmed < concurrency and not any(task.done() for task in clients):
        await asyncio.sleep(0.01)  # every client connected and answered once (or failed)
    meter = Meter(server.pid)
    broker_before = cpu_seconds(broker_pid) if broker_pid else 0.0
    switches_before = context_switches(server.pid)
    meter.start()
    deadline = perf_counter() + seconds
    start.set()
    await asyncio.gather(*clients)
    sample.seconds, sample.server_cpu, sample.client_cpu = meter.stop()
    sample.server_switches = context_switches(server.pid) - switches_before
    if broker_pid:
        sample.broker_cpu = cpu_seconds(broker_pid) - broker_before
    sample.ok = len(sample.latencies)
    sample.failed = sum(sample.statuses.values()) + sum(sample.errors.values())
    return sample


async def telemetry_rate(sidecar: Server, broker: Endpoint, fleet: Fleet, data_dir: Path, seconds: float,
                         concurrency: int) -> HttpSample:
    """Gatehouse's telemetry, with an application account counting what the broker relays."""
    from gatehouse.registry import Registry

    await settle(broker)
    subscriber = await open_mqtt(broker, fleet.app, KEEPALIVE)
    if subscriber.connack != 0:
        raise RuntimeError(f"the application account was refused with CONNACK {subscriber.connack}")
    relayed = 0

    async def count_deliveries() -> None:
        nonlocal relayed
        while True:
            kind, flags, body = await read_packet(subscriber.reader)
            if kind == PUBLISH:
                _topic, packet_id, _payload = parse_publish(flags, body)
                relayed += 1
                if packet_id is not None:
                    subscriber.writer.write(puback_packet(packet_id))

    counting = None
    try:
        await subscribe(subscriber, APP_FILTER, 1)
        counting = asyncio.create_task(count_deliveries())
        tokens = [login.username for login in fleet.tokens]
        sample = await http_rate(sidecar, telemetry_workload(tokens), seconds, concurrency, broker_pid=broker.pid)
        answered = sample.ok + sample.warmup_ok
        deadline = perf_counter() + 10
        while relayed < answered and perf_counter() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # anything beyond `answered` would show up now
    finally:
        if counting is not None:
            counting.cancel()
            await asyncio.gather(counting, return_exceptions=True)
        await subscriber.close()
    sample.notes.append(f"application got {relayed:,} of {answered:,} answered 200")
    if relayed != answered:
        sample.notes.append("MISMATCH: relayed != answered 200")
    last_ok = {fleet.tokens[i % len(fleet.tokens)].client_id: seq for i, seq in sample.last_ok_seq.items()}
    sample.notes.append(check_stored(Registry, data_dir, fleet, SimpleNamespace(last_acked_seq=last_ok)))
    return sample


# --- the run --------------------------------------------------------------------------------


@dataclass
class Settings:
    seconds: float
    concurrency: int
    rounds: int
    threads: int


QUICK = {"seconds": 2.5, "rounds": 2}
DEFAULT = {"seconds": 9.0, "rounds": 3}
CONCURRENCY = 32
TOKEN_DEVICES = 50


@dataclass
class Row:
    measurement: str
    server: str
    sample: HttpSample
    baseline: HttpSample | None = None  # None: this row is the baseline

    @property
    def ratio(self) -> float:
        return self.sample.rate / self.baseline.rate if self.baseline and self.baseline.rate else float("nan")


def best(samples: list[HttpSample]) -> HttpSample:
    return max(samples, key=lambda s: s.rate)


async def check_answers(sidecar: Server, bare: Server, token: str) -> None:
    """One request of each kind to each server before measuring: a clear error if the device
    API is not there (yet)."""
    for server, workload in ((sidecar, telemetry_workload([token])), (bare, telemetry_workload([token])),
                             (sidecar, provisioning_workload(True)), (bare, provisioning_workload(False))):
        sample = await http_rate(server, workload, 0.0, 1)
        if sample.warmup_ok != 1:
            async with aiohttp.ClientSession() as session, session.post(
                    server.base_url + workload.path(0), data=workload.body(0, 0),
                    headers=HEADERS) as response:
                answer = (await response.read())[:300]
            raise RuntimeError(f"{server.name}: POST {workload.path(0)} was answered {response.status} "
                               f"{answer!r}; is the device API there?")


async def measure(settings: Settings, sidecar: Server, bare: Server, broker: Endpoint, fleet: Fleet,
                  data_dir: Path) -> list[Row]:
    await check_answers(sidecar, bare, fleet.tokens[0].username)
    tokens = [login.username for login in fleet.tokens]
    rows: list[Row] = []
    common = f"{settings.concurrency} keep-alive clients, {settings.seconds:g} s, best of {settings.rounds}"

    print(f"## Telemetry requests per second ({common}; one token device per client)")
    samples: dict[str, list[HttpSample]] = {sidecar.name: [], bare.name: []}
    for _ in range(settings.rounds):
        for server in (sidecar, bare):
            if server is sidecar:
                sample = await telemetry_rate(sidecar, broker, fleet, data_dir, settings.seconds,
                                              settings.concurrency)
            else:
                sample = await http_rate(bare, telemetry_workload(tokens), settings.seconds, settings.concurrency)
            samples[server.name].append(sample)
            print(f"  {server.name:10} {sample.describe()}")
    baseline = best(samples[bare.name])
    rows += [Row("telemetry POST /api/v1/{token}/telemetry", sidecar.name, best(samples[sidecar.name]), baseline),
             Row("same requests, bare endpoint", bare.name, baseline)]

    print(f"\n## Provisioning requests per second ({common}; unique device names, "
          f"baseline: the same requests to the bare endpoint)")
    samples = {sidecar.name: [], bare.name: []}
    for _ in range(settings.rounds):
        for server in (sidecar, bare):
            workload = provisioning_workload(check=server is sidecar)
            sample = await http_rate(server, workload, settings.seconds, settings.concurrency,
                                     broker_pid=broker.pid if server is sidecar else None)
            samples[server.name].append(sample)
            print(f"  {server.name:10} {sample.describe()}")
    baseline = best(samples[bare.name])
    rows += [Row("provisioning POST /api/v1/provision", sidecar.name, best(samples[sidecar.name]), baseline),
             Row("same requests, bare endpoint", bare.name, baseline)]
    return rows


def print_table(rows: list[Row]) -> None:
    print("\n| measurement | server | requests/s | p50 ms | p99 ms | server CPU | broker CPU | load generator CPU "
          "| server context switches / request | Gatehouse / bare | target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for row in rows:
        s = row.sample
        ratio = ("", "", "") if row.baseline is None else (
            f"{row.ratio:.2f}", f">= {TARGET_RATIO:.2f}", "yes" if row.ratio >= TARGET_RATIO else "NO")
        print(f"| {row.measurement} | {row.server} | {s.rate:,.0f} | {s.percentile_ms(50):.1f} | "
              f"{s.percentile_ms(99):.1f} | {s.cpu_share(s.server_cpu)} | {s.cpu_share(s.broker_cpu)} | "
              f"{s.cpu_share(s.client_cpu)} | {s.switches_per_request:.1f} | {' | '.join(ratio)} |")
    print(f"\nTarget: the device API keeps at least {100 * TARGET_RATIO:.0f} % of a bare Flask endpoint's "
          f"throughput under the same waitress (Gatehouse / bare >= {TARGET_RATIO:.2f}). CPU: 100 % = one core.")


def warnings_in(log_path: Path) -> list[str]:
    """A server's log lines at WARNING or above, and tracebacks."""
    with contextlib.suppress(OSError):
        return [line for line in log_path.read_text().splitlines()
                if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)]
    return []


def print_warnings(name: str, lines: list[str], shown: int = 10) -> None:
    if lines:
        print(f"\n{name} log: {len(lines):,} warning/error lines while measuring; the first {min(shown, len(lines))}:")
        print("\n".join(f"  {line}" for line in lines[:shown]))


def versions() -> str:
    return ", ".join(f"{package} {metadata.version(package)}" for package in ("waitress", "Flask", "aiohttp"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument("--seconds", type=float, help=f"duration of each measurement (default {DEFAULT['seconds']:g}, "
                                                      f"quick {QUICK['seconds']:g})")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="concurrent keep-alive clients")
    parser.add_argument("--rounds", type=int, help=f"alternating rounds per measurement, best kept (default "
                                                   f"{DEFAULT['rounds']}, quick {QUICK['rounds']})")
    parser.add_argument("--threads", type=int, help="waitress threads of both servers (default: the sidecar's)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary directory goes")
    results.add_json_option(parser)
    parser.add_argument("--serve-bare", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.serve_bare)

    from sidecar.context import SidecarSettings

    preset = QUICK if args.quick else DEFAULT
    settings = Settings(seconds=args.seconds or preset["seconds"], concurrency=args.concurrency,
                        rounds=args.rounds or preset["rounds"], threads=args.threads or SidecarSettings.threads)
    started = perf_counter()
    print("# Gatehouse HTTP benchmark")
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpu:      {cpu_model()}")
    print(f"cores:    {usable_cores()}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"packages: {versions()}")
    print(f"platform: {platform.platform()}")
    print(f"settings: {settings}")
    print()

    def terminate(signum, frame) -> None:
        raise SystemExit(128 + signum)  # through the clean-up below

    signal.signal(signal.SIGTERM, terminate)
    servers = Servers()
    with tempfile.TemporaryDirectory(prefix="gatehouse-http-bench-", dir=args.tmpdir) as temp:
        work = Path(temp)
        data_dir = work / "data"
        logs = {"broker": work / "broker.log", "sidecar": work / "sidecar.log", "bare": work / "bare.log"}
        try:
            setup_start = perf_counter()
            fleet = prepare_data_dir(data_dir, work, tokens=max(TOKEN_DEVICES, settings.concurrency), basic=0, x509=0)
            print(f"setup: {len(fleet.tokens)} token devices, 1 application, 1 ALLOW_CREATE profile in "
                  f"{perf_counter() - setup_start:.1f} s")
            gatehouse = [sys.executable, "-m", "gatehouse", "--data-dir", str(data_dir)]
            broker = servers.start("broker", [*gatehouse, "broker", "--host", "127.0.0.1", "--mqtt-port", "0",
                                              "--mqtts-port", "0", "--metrics-port", "0"], logs["broker"])
            sidecar = servers.start_http("Gatehouse", [
                *gatehouse, "sidecar", "--host", "127.0.0.1", "--http-port", "0", "--broker-host", "127.0.0.1",
                "--broker-port", str(broker.mqtt_port), "--threads", str(settings.threads)],
                logs["sidecar"], wait_for=(LINK_UP,))
            bare = servers.start_http("bare Flask", [sys.executable, str(Path(__file__).resolve()), "--serve-bare",
                                                     str(settings.threads)], logs["bare"])
            print(f"servers: Gatehouse sidecar pid {sidecar.pid} (port {sidecar.port}) with broker pid {broker.pid} "
                  f"(port {broker.mqtt_port}), bare Flask pid {bare.pid} (port {bare.port}); "
                  f"{settings.threads} waitress threads each\n")
            rows = asyncio.run(measure(settings, sidecar, bare, broker, fleet, data_dir))
            warnings = {name: warnings_in(log) for name, log in logs.items()}  # before the servers stop
        except BaseException:
            for name, log in logs.items():
                with contextlib.suppress(OSError):
                    text = log.read_text()
                    print(f"\n--- {name} log (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]),
                          file=sys.stderr)
            raise
        finally:
            servers.stop_all()
    print_table(rows)
    results.write(args.json, "HTTP sidecar (bench/http.py)", [
        results.Figure(f"{row.measurement} (p50 {row.sample.percentile_ms(50):.1f} ms, p99 "
                       f"{row.sample.percentile_ms(99):.1f} ms; server context switches per request "
                       f"{row.sample.switches_per_request:.1f}, bare {row.baseline.switches_per_request:.1f})",
                       row.sample.rate, "requests/s",
                       "bare Flask endpoint, same waitress", row.baseline.rate, row.ratio, f">= {TARGET_RATIO:.2f}",
                       row.ratio >= TARGET_RATIO)
        for row in rows if row.baseline is not None])
    for name, lines in warnings.items():
        print_warnings(name, lines)
    print(f"\nwall time: {perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
