#!/usr/bin/env python3
"""CoAP benchmark: the Gatehouse CoAP bridge in front of the sidecar, against the sidecar's HTTP device API.

    .venv/bin/python bench/coap.py            # about 2 minutes
    .venv/bin/python bench/coap.py --quick    # about 30 s

The issue's target: the bridge adds no more than the sidecar's own per-request CPU, i.e. the
bridge's CPU per CoAP telemetry request <= the sidecar's CPU per HTTP telemetry request sent to
it directly (bridge / sidecar <= 1.00). Figures are printed, never asserted; both are measured in
the same run on the same machine, and the two measurements alternate (best of --rounds each).

Four processes are started on free ports, as in bench/mqtt.py and bench/http.py:

- the Gatehouse broker, on a data dir prepared with the library (bench/mqtt.py's
  `prepare_data_dir`: token devices, an application account, an ALLOW_CREATE profile);
- the sidecar, `python -m gatehouse --data-dir TMP sidecar --http-port 0 --broker-port PORT`,
  used once its MQTT link to that broker is up (so every telemetry request is also published);
- the CoAP bridge, `python -m gatehouse --data-dir TMP coap --coap-port 0 --coaps-port 0
  --sidecar-url http://127.0.0.1:PORT`, which forwards every CoAP request to the sidecar's HTTP
  device API over one keep-alive aiohttp session (coaps: DTLS 1.2 with the data dir's server
  certificate).

The load generator is this process.

1. Telemetry: C concurrent clients, each with its own device token, send one request after the
   other: over CoAP, a CON POST /api/v1/{token}/telemetry to the bridge (only 2.01 counts); over
   HTTP, the same POST to the sidecar directly on a keep-alive connection (bench/http.py's
   client; only 200 counts). The CoAP client is a small asyncio loop over raw UDP, one socket
   per client, with aiocoap's `Message.encode()`/`Message.decode()` for the wire format (aiocoap's
   own client Context sends one CON request at a time per remote, RFC 7252's NSTART=1); it
   retransmits an unanswered CON after 2 s (same message ID), acknowledges a separate CON
   response, and counts the bridge's RST as a failure (the run's line notes how many requests were
   retransmitted and how many answers came as separate responses). Every client makes one request before the
   clock starts. After each run every device's latest stored `seq` must be its last one that
   counted. Beside each rate: p50/p99 latency, the CPU of the bridge, the sidecar and the broker
   (from /proc/PID/stat, all threads) and, divided by the requests that counted, the CPU per
   request of the bridge and of the sidecar. The target compares the best CoAP run's bridge CPU
   per request with the best direct run's sidecar CPU per request.
2. DTLS handshakes: D concurrent clients each do, in a loop, a full one-way DTLS 1.2 handshake
   with the bridge's coaps port (a new UDP socket and a new pyOpenSSL session each time, no
   resumption; the server certificate verified against the data dir's CA), one CoAP CON POST
   telemetry over it (only 2.01 counts), and close_notify (the bridge drops the session).
   Reported: handshakes per second, the latency of the whole exchange, and the bridge's CPU per
   handshake (which includes that one forwarded POST). There is no DTLS baseline in this repo,
   so that row has no target; the ratio column compares it with the plain CoAP request rate of
   measurement 1 (information only).

The load generator's own CPU is shown beside each figure: near 100 % (one core) means the
client saturated and the rate is a floor. On a 2-core machine the load generator, the bridge,
the sidecar and the broker share the cores, so read the CPU-per-request columns as the
capacity figures; the rates move with whatever else runs.

Subprocesses and temporary files are removed on exit, errors and SIGTERM included.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This directory goes after the standard library's, as in bench/http.py and bench/mqtt.py:
# bench/http.py is named like the standard library's `http` package, which aiohttp imports.
BENCH_DIR = Path(__file__).resolve().parent
sys.path.sort(key=lambda entry: entry == str(BENCH_DIR))

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import os
import platform
import re
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from types import SimpleNamespace

import results  # bench/results.py, beside this file
from aiocoap import ACK, CON, EMPTY, POST, RST, Message
from aiocoap.numbers import ContentFormat
from aiocoap.numbers.codes import Code
from machine import (  # bench/machine.py, beside this file
    cpu_model,
    cpu_seconds,
    usable_cores,
)
from mqtt import (  # bench/mqtt.py, beside this file: also puts the project root on sys.path
    OP_TIMEOUT,
    Endpoint,
    Fleet,
    Meter,
    check_stored,
    prepare_data_dir,
    settle,
)
from OpenSSL import SSL


def _bench_http():
    """bench/http.py, imported under another name: `import http` is the standard library's."""
    spec = importlib.util.spec_from_file_location("bench_http", BENCH_DIR / "http.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_http = _bench_http()
HttpSample, Server, Servers = bench_http.HttpSample, bench_http.Server, bench_http.Servers
http_rate, telemetry_body, telemetry_workload = bench_http.http_rate, bench_http.telemetry_body, \
    bench_http.telemetry_workload

perf_counter = time.perf_counter

TARGET_RATIO = 1.0  # bridge CPU per CoAP request / sidecar CPU per direct HTTP request
ACK_TIMEOUT = 2.0  # RFC 7252's ACK_TIMEOUT: an unanswered CON goes out again after this
COAP_LISTENING = re.compile(r"^(COAP |COAPS) listening on \S+:(\d+)$", re.MULTILINE)


# --- the bridge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bridge:
    """The running CoAP bridge: its ports and the process to watch (`settle` needs name and pid)."""

    name: str
    pid: int
    coap_port: int
    coaps_port: int


class Processes(Servers):
    """bench/http.py's servers (process groups killed on exit), plus the CoAP bridge."""

    def start_bridge(self, argv: list[str], log_path: Path, timeout: float = 30) -> Bridge:
        """Start `gatehouse coap`; return once it printed both of its listeners."""
        with open(log_path, "w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._running.append(process)
        deadline = time.monotonic() + timeout
        while True:
            ports = {kind: int(port) for kind, port in COAP_LISTENING.findall(log_path.read_text())}
            if len(ports) == 2:
                return Bridge("CoAP bridge", process.pid, ports["COAP "], ports["COAPS"])
            if process.poll() is not None or time.monotonic() > deadline:
                process.poll()
                raise RuntimeError(f"the CoAP bridge did not start (exit code {process.returncode}):\n"
                                   f"{log_path.read_text()}")
            time.sleep(0.05)


# --- measuring ------------------------------------------------------------------------------


@dataclass
class CoapSample(HttpSample):
    """bench/http.py's sample (server_cpu: the bridge's, or the sidecar's for direct HTTP),
    plus the sidecar's CPU while the bridge was measured."""

    sidecar_cpu: float | None = None

    def bridge_cpu(self) -> float | None:
        return self.server_cpu if self.sidecar_cpu is not None else None

    def sidecar(self) -> float:
        return self.server_cpu if self.sidecar_cpu is None else self.sidecar_cpu

    def per_request_ms(self, cpu: float | None) -> str:
        return "-" if cpu is None or not self.ok else f"{1000 * cpu / self.ok:.3f}"

    def describe(self) -> str:
        """bench/http.py's line, naming the processes, with the CPU per request."""
        if self.sidecar_cpu is None:  # direct HTTP: the server is the sidecar
            return (super().describe().replace("server CPU", "sidecar CPU")
                    + f"  [sidecar CPU per request {self.per_request_ms(self.sidecar())} ms]")
        return (super().describe().replace("server CPU", f"sidecar CPU {self.cpu_share(self.sidecar())}, bridge CPU")
                + f"  [CPU per request: bridge {self.per_request_ms(self.bridge_cpu())} ms, "
                  f"sidecar {self.per_request_ms(self.sidecar())} ms]")


def as_coap_sample(sample) -> CoapSample:
    return CoapSample(**{name: getattr(sample, name) for name in HttpSample.__dataclass_fields__})


class Datagrams(asyncio.DatagramProtocol):
    """A connected UDP socket's incoming datagrams, handed to `on_datagram`."""

    def __init__(self, on_datagram):
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        pass


def telemetry_message(token: str, n: int, message_id: int, request_token: bytes) -> bytes:
    message = Message(code=POST, payload=telemetry_body(n), uri_path=("api", "v1", token, "telemetry"),
                      content_format=ContentFormat.JSON)
    message.mtype, message.mid, message.token = CON, message_id, request_token
    return message.encode()


def empty(mtype, message_id: int) -> bytes:
    message = Message(code=EMPTY)
    message.mtype, message.mid = mtype, message_id
    return message.encode()


class Exchanges:
    """Matches the answers of one CoAP client's requests: piggybacked on the ACK, or separate
    (after an empty ACK; a CON response is acknowledged). `send` puts bytes on the wire."""

    def __init__(self, send):
        self.send = send
        self.waiting: dict[bytes, asyncio.Future] = {}  # request token -> response code
        self.tokens_by_mid: dict[int, bytes] = {}
        self.retransmissions = self.separate = 0  # requests sent again; responses after an empty ACK

    def received(self, data: bytes) -> None:
        try:
            message = Message.decode(data)
        except Exception:  # noqa: BLE001  (anything undecodable is not ours)
            return
        if message.mtype == CON:
            self.send(empty(ACK, message.mid))
        if message.code == EMPTY:
            if message.mtype == RST and message.mid in self.tokens_by_mid:
                self._answer(self.tokens_by_mid[message.mid], "RST")
            self.separate += message.mtype == ACK
            return  # an empty ACK: the response comes separately
        self._answer(message.token, message.code)

    def _answer(self, request_token: bytes, code) -> None:
        future = self.waiting.pop(request_token, None)
        if future is not None and not future.done():
            future.set_result(code)

    async def exchange(self, request: bytes, message_id: int, request_token: bytes):
        """Send a CON request, retransmitting it after ACK_TIMEOUT, 2 x ACK_TIMEOUT ... until
        OP_TIMEOUT; return the response code, or "RST"."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting[request_token] = future
        self.tokens_by_mid[message_id] = request_token
        deadline = perf_counter() + OP_TIMEOUT
        timer: asyncio.TimerHandle | None = None

        def transmit(wait: float) -> None:
            nonlocal timer
            if future.done():
                return
            left = deadline - perf_counter()
            if left <= 0:
                future.set_exception(TimeoutError())
                return
            self.retransmissions += wait > ACK_TIMEOUT
            self.send(request)
            timer = loop.call_later(min(wait, left), transmit, 2 * wait)

        try:
            transmit(ACK_TIMEOUT)
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self.waiting.pop(request_token, None)
            self.tokens_by_mid.pop(message_id, None)


async def coap_rate(bridge: Bridge, sidecar: Server, broker: Endpoint, tokens: list[str], seconds: float,
                    concurrency: int) -> CoapSample:
    """`concurrency` CoAP clients, one UDP socket and one device token each, send CON POST
    telemetry one after the other until `seconds` have passed (after one warm-up request each)."""
    await settle(bridge)
    await settle(sidecar)
    loop = asyncio.get_running_loop()
    start = asyncio.Event()
    deadline = 0.0
    warmed = 0
    sample = CoapSample(0, 0, 0.0, 0.0, 0.0, [])

    async def post(client: Exchanges, token: str, n: int) -> int | str:
        """0 if the request counted, else the response code or an exception's name."""
        message_id, request_token = n & 0xFFFF, n.to_bytes(4, "big")
        try:
            code = await client.exchange(telemetry_message(token, n, message_id, request_token), message_id,
                                         request_token)
        except (TimeoutError, OSError) as e:
            return type(e).__name__
        return 0 if code == Code.CREATED else str(code)

    async def run_client(i: int) -> None:
        nonlocal warmed
        token = tokens[i % len(tokens)]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(lambda data: client.received(data)), remote_addr=("127.0.0.1", bridge.coap_port))
        client = Exchanges(transport.sendto)
        try:
            failure = await post(client, token, 0)
            sample.warmup_ok += failure == 0
            warmed += 1
            await start.wait()
            n = 0
            while perf_counter() < deadline:
                n += 1
                began = perf_counter()
                failure = await post(client, token, n)
                if failure == 0:
                    sample.latencies.append(perf_counter() - began)
                    sample.last_ok_seq[i] = n
                else:
                    sample.errors[failure] = sample.errors.get(failure, 0) + 1
            retransmissions[0] += client.retransmissions
            retransmissions[1] += client.separate
        finally:
            transport.close()

    retransmissions = [0, 0]
    clients = [asyncio.create_task(run_client(i)) for i in range(concurrency)]
    while warmed < concurrency and not any(task.done() for task in clients):
        await asyncio.sleep(0.01)
    meter = Meter(bridge.pid)
    sidecar_before, broker_before = cpu_seconds(sidecar.pid), cpu_seconds(broker.pid)
    meter.start()
    deadline = perf_counter() + seconds
    start.set()
    await asyncio.gather(*clients)
    sample.seconds, sample.server_cpu, sample.client_cpu = meter.stop()
    sample.sidecar_cpu = cpu_seconds(sidecar.pid) - sidecar_before
    sample.broker_cpu = cpu_seconds(broker.pid) - broker_before
    sample.ok = len(sample.latencies)
    sample.failed = sum(sample.errors.values())
    if any(retransmissions):
        sample.notes.append(f"retransmitted requests {retransmissions[0]:,}, separate responses {retransmissions[1]:,}")
    return sample


def check_devices(sample: CoapSample, fleet: Fleet, data_dir: Path) -> None:
    """Every device's latest stored `seq` must be the last one that counted."""
    from gatehouse.registry import Registry

    last_ok = {fleet.tokens[i % len(fleet.tokens)].client_id: seq for i, seq in sample.last_ok_seq.items()}
    sample.notes.append(check_stored(Registry, data_dir, fleet, SimpleNamespace(last_acked_seq=last_ok)))


# --- DTLS -----------------------------------------------------------------------------------


def dtls_client_context(ca: Path) -> SSL.Context:
    context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    context.load_verify_locations(str(ca))
    context.set_verify(SSL.VERIFY_PEER)  # one-way: the client checks the server, shows no certificate
    return context


async def dtls_exchange(context: SSL.Context, port: int, token: str, n: int) -> tuple[bool, float]:
    """A new DTLS session (full handshake), one CoAP CON POST telemetry over it, close_notify.
    Returns (whether the POST was answered 2.01, seconds the handshake took)."""
    loop = asyncio.get_running_loop()
    incoming: asyncio.Queue[bytes] = asyncio.Queue()
    transport, _ = await loop.create_datagram_endpoint(lambda: Datagrams(incoming.put_nowait),
                                                       remote_addr=("127.0.0.1", port))
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    connection.set_tlsext_host_name(b"localhost")

    def flush() -> None:
        while True:
            try:
                transport.sendto(connection.bio_read(65_536))
            except SSL.WantReadError:
                return

    async def next_datagram() -> bool:
        """Feed the next datagram to the session; False if the DTLS timer ran out first."""
        timeout = connection.DTLSv1_get_timeout()
        try:
            connection.bio_write(await asyncio.wait_for(incoming.get(), ACK_TIMEOUT if timeout is None else timeout))
        except TimeoutError:
            connection.DTLSv1_handle_timeout()  # retransmits the last flight
            flush()
            return False
        return True

    async def handshake() -> None:
        while True:
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                flush()
                await next_datagram()
                continue
            flush()
            return

    try:
        began = perf_counter()
        await handshake()
        handshaken = perf_counter() - began
        message_id, request_token = n & 0xFFFF, n.to_bytes(4, "big")
        connection.send(telemetry_message(token, n, message_id, request_token))
        flush()
        code = None
        while code is None:
            if not await next_datagram():
                continue
            with contextlib.suppress(SSL.WantReadError):
                while True:
                    answer = Message.decode(connection.recv(65_536))
                    if answer.mtype == CON:
                        connection.send(empty(ACK, answer.mid))
                        flush()
                    if answer.code != EMPTY and answer.token == request_token:
                        code = answer.code
                        break
        with contextlib.suppress(SSL.Error):
            connection.shutdown()
            flush()
        return code == Code.CREATED, handshaken
    finally:
        transport.close()


async def dtls_rate(bridge: Bridge, sidecar: Server, broker: Endpoint, ca: Path, tokens: list[str],
                    seconds: float, concurrency: int) -> CoapSample:
    """`concurrency` workers run `dtls_exchange` back to back until `seconds` have passed;
    latencies are of the whole exchange (handshake, POST, close)."""
    await settle(bridge)
    await settle(sidecar)
    context = dtls_client_context(ca)
    counter = itertools.count()
    sample = CoapSample(0, 0, 0.0, 0.0, 0.0, [])
    handshakes: list[float] = []
    ok, _ = await asyncio.wait_for(dtls_exchange(context, bridge.coaps_port, tokens[0], next(counter)), OP_TIMEOUT)
    sample.warmup_ok = int(ok)
    meter = Meter(bridge.pid)
    sidecar_before, broker_before = cpu_seconds(sidecar.pid), cpu_seconds(broker.pid)
    meter.start()
    deadline = perf_counter() + seconds

    async def worker(i: int) -> None:
        while perf_counter() < deadline:
            n = next(counter)
            began = perf_counter()
            try:
                ok, handshake = await asyncio.wait_for(
                    dtls_exchange(context, bridge.coaps_port, tokens[i % len(tokens)], n), OP_TIMEOUT)
            except (TimeoutError, OSError, SSL.Error) as e:
                sample.errors[type(e).__name__] = sample.errors.get(type(e).__name__, 0) + 1
                continue
            if ok:
                sample.latencies.append(perf_counter() - began)
                handshakes.append(handshake)
            else:
                sample.errors["not 2.01"] = sample.errors.get("not 2.01", 0) + 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    sample.seconds, sample.server_cpu, sample.client_cpu = meter.stop()
    sample.sidecar_cpu = cpu_seconds(sidecar.pid) - sidecar_before
    sample.broker_cpu = cpu_seconds(broker.pid) - broker_before
    sample.ok = len(sample.latencies)
    sample.failed = sum(sample.errors.values())
    if handshakes:
        handshakes.sort()
        sample.notes.append(f"handshake alone: p50 {1000 * handshakes[len(handshakes) // 2]:.1f} ms")
    return sample


# --- the run --------------------------------------------------------------------------------


@dataclass
class Settings:
    seconds: float
    concurrency: int
    dtls_concurrency: int
    rounds: int


QUICK = {"seconds": 2.5, "rounds": 2}
DEFAULT = {"seconds": 8.0, "rounds": 3}
CONCURRENCY = 32
DTLS_CONCURRENCY = 8
TOKEN_DEVICES = 50


@dataclass
class Row:
    measurement: str
    path: str
    sample: CoapSample
    ratio: float | None = None  # bridge CPU/request over the direct run's sidecar CPU/request
    target: bool = False  # whether `ratio` is held to TARGET_RATIO (else information only)


def best(samples: list[CoapSample]) -> CoapSample:
    return max(samples, key=lambda s: s.rate)


def per_request(cpu: float | None, sample: CoapSample) -> float:
    return cpu / sample.ok if cpu is not None and sample.ok else float("nan")


async def check_answers(bridge: Bridge, sidecar: Server, broker: Endpoint, token: str, ca: Path) -> None:
    """One request each way before measuring: a clear error if something is not there (yet)."""
    direct = await http_rate(sidecar, telemetry_workload([token]), 0.0, 1)
    coap = await coap_rate(bridge, sidecar, broker, [token], 0.0, 1)
    ok, _ = await asyncio.wait_for(dtls_exchange(dtls_client_context(ca), bridge.coaps_port, token, 0), OP_TIMEOUT)
    if not (direct.warmup_ok and coap.warmup_ok and ok):
        raise RuntimeError(f"a first telemetry request failed: HTTP direct ok={direct.warmup_ok} "
                           f"{direct.statuses or direct.errors}, CoAP ok={coap.warmup_ok} {coap.errors}, "
                           f"CoAP over DTLS ok={ok}")


async def measure(settings: Settings, bridge: Bridge, sidecar: Server, broker: Endpoint, fleet: Fleet,
                  data_dir: Path, ca: Path) -> list[Row]:
    tokens = [login.username for login in fleet.tokens]
    await check_answers(bridge, sidecar, broker, tokens[0], ca)
    common = f"{settings.concurrency} clients, {settings.seconds:g} s, best of {settings.rounds}"

    print(f"## Telemetry requests per second ({common}; one token device per client): CoAP through the "
          f"bridge vs HTTP to the sidecar directly")
    samples: dict[str, list[CoapSample]] = {"coap": [], "http": []}
    for _ in range(settings.rounds):
        coap = await coap_rate(bridge, sidecar, broker, tokens, settings.seconds, settings.concurrency)
        check_devices(coap, fleet, data_dir)
        samples["coap"].append(coap)
        print(f"  CoAP  {coap.describe()}")
        http = as_coap_sample(await http_rate(sidecar, telemetry_workload(tokens), settings.seconds,
                                              settings.concurrency, broker_pid=broker.pid))
        check_devices(http, fleet, data_dir)
        samples["http"].append(http)
        print(f"  HTTP  {http.describe()}")
    coap, http = best(samples["coap"]), best(samples["http"])
    cpu_ratio = per_request(coap.bridge_cpu(), coap) / per_request(http.sidecar(), http)
    rows = [Row("telemetry CON POST /api/v1/{token}/telemetry (2.01)", "CoAP -> bridge -> sidecar", coap,
                cpu_ratio, target=True),
            Row("same requests, POST (200)", "HTTP -> sidecar", http)]

    print(f"\n## DTLS handshakes per second ({settings.dtls_concurrency} clients, {settings.seconds:g} s, best of "
          f"{settings.rounds}; each a full one-way handshake, one CON POST telemetry, close_notify)")
    handshakes = []
    for _ in range(settings.rounds):
        sample = await dtls_rate(bridge, sidecar, broker, ca, tokens, settings.seconds, settings.dtls_concurrency)
        handshakes.append(sample)
        print(f"  CoAPS {sample.describe()}")
    dtls = best(handshakes)
    rows.append(Row("DTLS 1.2 handshake + 1 POST + close_notify", "CoAPS -> bridge -> sidecar", dtls,
                    dtls.rate / coap.rate if coap.rate else float("nan")))
    return rows


def print_table(rows: list[Row]) -> None:
    print("\n| measurement | path | requests/s | p50 ms | p99 ms | bridge CPU | bridge CPU/req ms | sidecar CPU "
          "| sidecar CPU/req ms | broker CPU | load generator CPU | ratio | target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for row in rows:
        s = row.sample
        if row.ratio is None:
            ratio = ("", "", "")
        elif row.target:
            ratio = (f"{row.ratio:.2f}", f"<= {TARGET_RATIO:.2f}", "yes" if row.ratio <= TARGET_RATIO else "NO")
        else:
            ratio = (f"{row.ratio:.2f} (vs plain CoAP req/s)", "no baseline", "-")
        print(f"| {row.measurement} | {row.path} | {s.rate:,.0f} | {s.percentile_ms(50):.1f} | "
              f"{s.percentile_ms(99):.1f} | {s.cpu_share(s.bridge_cpu())} | {s.per_request_ms(s.bridge_cpu())} | "
              f"{s.cpu_share(s.sidecar())} | {s.per_request_ms(s.sidecar())} | {s.cpu_share(s.broker_cpu)} | "
              f"{s.cpu_share(s.client_cpu)} | {' | '.join(ratio)} |")
    print(f"\nTarget: the bridge adds no more than the sidecar's own per-request CPU: bridge CPU per CoAP request "
          f"/ sidecar CPU per direct HTTP request <= {TARGET_RATIO:.2f} (ratio of the first row). CPU: 100 % = "
          f"one core. The DTLS row has no baseline in this repo; its ratio is handshakes/s over plain CoAP "
          f"requests/s, for information. The bridge's CPU per handshake includes the forwarded POST.")


def summary_figures(rows: list[Row]) -> list[results.Figure]:
    coap_row, http_row, dtls_row = rows
    coap, http, dtls = coap_row.sample, http_row.sample, dtls_row.sample
    return [
        results.Figure("bridge CPU per CoAP telemetry request", 1000 * per_request(coap.bridge_cpu(), coap), "ms",
                       "sidecar CPU per direct HTTP request", 1000 * per_request(http.sidecar(), http), coap_row.ratio,
                       f"<= {TARGET_RATIO:.2f}", coap_row.ratio <= TARGET_RATIO),
        results.Figure("CoAP telemetry through bridge and sidecar", coap.rate, "requests/s",
                       "same requests over HTTP to the sidecar", http.rate, coap.rate / http.rate if http.rate else None),
        results.Figure("DTLS 1.2 handshakes (each with 1 POST and close_notify)", dtls.rate, "handshakes/s",
                       "plain CoAP requests/s", coap.rate, dtls_row.ratio),
    ]


def describe_machine(settings: Settings) -> None:
    packages = ", ".join(f"{name} {metadata.version(name)}" for name in ("aiocoap", "pyOpenSSL", "aiohttp",
                                                                         "waitress"))
    for label, value in (("command", shlex.join([sys.executable, *sys.argv])), ("cpu", cpu_model()),
                         ("cores", usable_cores()), ("openssl", SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()),
                         ("python", f"{platform.python_implementation()} {platform.python_version()}"),
                         ("packages", packages), ("platform", platform.platform()), ("settings", settings)):
        print(f"{label + ':':10}{value}")
    print()


def run(settings: Settings, work: Path, processes: Processes) -> list[Row]:
    data_dir = work / "data"
    logs = {name: work / f"{name}.log" for name in ("broker", "sidecar", "bridge")}
    try:
        began = perf_counter()
        fleet = prepare_data_dir(data_dir, work, tokens=max(TOKEN_DEVICES, settings.concurrency), basic=0, x509=0)
        print(f"setup: {len(fleet.tokens)} token devices in {perf_counter() - began:.1f} s")
        gatehouse = [sys.executable, "-m", "gatehouse", "--data-dir", str(data_dir)]
        broker = processes.start("broker", [*gatehouse, "broker", "--host", "127.0.0.1", "--mqtt-port", "0",
                                            "--mqtts-port", "0", "--metrics-port", "0"], logs["broker"])
        sidecar = processes.start_http("sidecar", [
            *gatehouse, "sidecar", "--host", "127.0.0.1", "--http-port", "0", "--broker-host", "127.0.0.1",
            "--broker-port", str(broker.mqtt_port)], logs["sidecar"], wait_for=(bench_http.LINK_UP,))
        bridge = processes.start_bridge([*gatehouse, "coap", "--host", "127.0.0.1", "--coap-port", "0",
                                         "--coaps-port", "0", "--metrics-port", "0", "--sidecar-url", sidecar.base_url],
                                         logs["bridge"])
        print(f"processes: bridge pid {bridge.pid} (coap {bridge.coap_port}, coaps {bridge.coaps_port}), sidecar pid "
              f"{sidecar.pid} (http {sidecar.port}), broker pid {broker.pid} (mqtt {broker.mqtt_port})\n")
        rows = asyncio.run(measure(settings, bridge, sidecar, broker, fleet, data_dir, data_dir / "pki" / "ca.pem"))
    except BaseException:
        for name, log in logs.items():
            with contextlib.suppress(OSError):
                tail = "\n".join(log.read_text().splitlines()[-40:])
                print(f"\n--- {name} log (last 40 lines) ---\n{tail}", file=sys.stderr)
        raise
    print_table(rows)
    for name, log in logs.items():
        bench_http.print_warnings(name, bench_http.warnings_in(log))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument("--seconds", type=float, help=f"duration of each measurement (default {DEFAULT['seconds']:g}, "
                                                      f"quick {QUICK['seconds']:g})")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="concurrent telemetry clients")
    parser.add_argument("--dtls-concurrency", type=int, default=DTLS_CONCURRENCY,
                        help="concurrent DTLS handshake clients")
    parser.add_argument("--rounds", type=int, help=f"alternating rounds per measurement, best kept (default "
                                                   f"{DEFAULT['rounds']}, quick {QUICK['rounds']})")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary directory goes")
    results.add_json_option(parser)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULT
    settings = Settings(seconds=args.seconds or preset["seconds"], concurrency=args.concurrency,
                        dtls_concurrency=args.dtls_concurrency, rounds=args.rounds or preset["rounds"])
    started = perf_counter()
    print("# Gatehouse CoAP benchmark")
    describe_machine(settings)

    def terminate(signum, frame) -> None:
        raise SystemExit(128 + signum)  # through the clean-up below

    signal.signal(signal.SIGTERM, terminate)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="gatehouse-coap-bench-", dir=args.tmpdir) as temp:
        try:
            rows = run(settings, Path(temp), processes)
        finally:
            processes.stop_all()
    results.write(args.json, "CoAP bridge (bench/coap.py)", summary_figures(rows))
    print(f"\nwall time: {perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
