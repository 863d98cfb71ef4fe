#!/usr/bin/env python3
"""PostgreSQL beside SQLite: login lookups, provisioning and bulk import on both stores, in the
same run on the same machine.

    .venv/bin/python bench/postgresql.py              # 10,000-device registries, a 100,000-row import
    .venv/bin/python bench/postgresql.py --quick      # short runs, to check that everything works
    .venv/bin/python bench/postgresql.py --million    # also 1,000,000-device registries (about 5 minutes)

Each store gets the same data, built by the same code path, and the same calls; PostgreSQL's
figures are printed beside SQLite's with their ratio (PostgreSQL / SQLite). Nothing is asserted
about timings; the logins and provisioning answers are checked, so that a fast figure cannot come
from refusals.

Stores:
- SQLite: gatehouse.storage.SqliteStore on a file in the temporary directory (WAL, synchronous
  NORMAL: a commit does not wait for the disk; a checkpoint does).
- PostgreSQL: a throwaway server of its own (tests/postgres_cluster.py: Debian's binaries, run as
  an unprivileged user, the data directory in the temporary directory, on the same disk), reached
  over TCP on 127.0.0.1, with `--postgres durable` (the default: fsync, full_page_writes and
  synchronous_commit on, every commit waits for its WAL to reach the disk, as a production server
  does) or `--postgres fsync-off` (the test suite's cluster: fsync and full_page_writes off), or
  `both`. The settings used are printed.

Measurements, on each store:
1. Bulk import of a CSV of access-token devices (`NAME,TYPE,ACCESS_TOKEN`) through what
   `gatehouse device import` runs (gatehouse.bulk_import: header_delimiter, parse_rows,
   import_rows), CSV text in memory to committed devices, into a fresh database: the registry of
   --devices devices (plus --devices/10 MQTT basic devices imported afterwards, not timed), and a
   fresh database of --import-rows rows. A registry is then settled before its lookups (Store.settle:
   PostgreSQL's VACUUM ANALYZE and CHECKPOINT, what autovacuum and the checkpointer would soon do
   by themselves; SQLite's WAL checkpoint), so that they meet its steady state.
2. Login lookups on that registry, time-bounded (--seconds) over keys drawn at random up front,
   each call timed on its own (p50 / p99): Registry.mqtt_login with an access token, with MQTT basic
   (client id + user name + password), and Registry.token_login (HTTP, CoAP); in 1 thread and in
   4 threads, each thread with a Registry of its own, as the sidecar's request threads have.
3. Provisioning requests (Registry.provision, an ALLOW_CREATE_NEW_DEVICES profile, a new device
   name each, only SUCCESS counts): 1 thread, 4 threads (a Registry each) and 4 processes.
4. With --million: a registry of 1,000,000 token devices (+ 100,000 MQTT basic) on each store,
   built by importing a 1,000,000-row CSV (target: >= 20,000 devices/s), and the 1-thread lookups
   on it against the same lookups on the --devices registry, measured interleaved (alternating
   slots, so that both meet the same load from whatever else runs on the machine; targets: p99
   under 1 ms and at most 1.5x the small registry's p99).

Temporary files and the PostgreSQL server are removed on exit.
"""
from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import platform
import random
import secrets
import shlex
import shutil
import sqlite3
import string
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)
sys.path.sort(key=lambda entry: entry == str(Path(__file__).resolve().parent))

import results  # noqa: E402  (bench/results.py, beside this file)
from machine import cpu_model, usable_cores  # noqa: E402  (bench/machine.py, beside this file)

from gatehouse.bulk_import import (  # noqa: E402
    BulkImportMapping,
    header_delimiter,
    import_rows,
    parse_rows,
    read_header,
)
from gatehouse.models import ProvisionType  # noqa: E402
from gatehouse.provisioning import ProvisionRequest, ProvisionStatus  # noqa: E402
from gatehouse.registry import Registry  # noqa: E402
from gatehouse.server_key import ServerKey  # noqa: E402
from gatehouse.storage import DatabaseUrl  # noqa: E402

perf_counter = time.perf_counter
perf_counter_ns = time.perf_counter_ns

ALPHANUMERICS = string.ascii_letters + string.digits
THREADS = 4
WARM_UP = 50  # calls before the clock starts
ROUNDS = 3  # alternating slots of the small and the big registry's lookups (--million)
PROVISION_NAMES = 200_000  # new device names per provisioning measurement (or thread, process)
PROFILE_NAME = "default"  # the profile a new registry has, named in TYPE as ThingsBoard CSVs do
PROVISION_KEY = "bench-provision-key"
PROVISION_SECRET = "bench-provision-secret"
POSTGRES_SETTINGS = {
    "durable": {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"},
    "fsync-off": {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on"},
}
SHOWN_SETTINGS = ("server_version", "fsync", "full_page_writes", "synchronous_commit", "wal_level", "shared_buffers",
                  "wal_buffers", "max_wal_size", "checkpoint_timeout", "work_mem", "max_connections")
IMPORT_TARGET = 20_000  # devices/s, the 1,000,000-row import
P99_TARGET_US = 1000.0
P99_GROWTH_TARGET = 1.5  # 1M registry's p99 / small registry's p99


# --- data -----------------------------------------------------------------------------------


@dataclass
class DataSet:
    """A registry's CSVs (token devices, then MQTT basic devices) and their login keys."""

    size: int
    token_csv: str
    basic_csv: str
    tokens: list[tuple[str, str]]  # (client id, token)
    basics: list[tuple[str, str, str]]  # (client id, user name, password)


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(ALPHANUMERICS, k=length))


def build_data_set(size: int, rng: random.Random, prefix: str) -> DataSet:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["NAME", "TYPE", "ACCESS_TOKEN"])
    tokens = []
    for i in range(size):
        token = random_text(rng, 20)  # ThingsBoard's generated-token shape; a clash is 62**-20
        tokens.append((f"mqtt-{prefix}-{i}", token))
        writer.writerow([f"{prefix}-device-{i:07d}", PROFILE_NAME, token])
    token_csv = out.getvalue()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["NAME", "TYPE", "MQTT_CLIENT_ID", "MQTT_USER_NAME", "MQTT_PASSWORD"])
    basics = []
    for i in range(size // 10):
        key = (f"basic-{prefix}-{i}", f"user-{random_text(rng, 12)}", random_text(rng, 16))
        basics.append(key)
        writer.writerow([f"{prefix}-basic-{i:07d}", PROFILE_NAME, *key])
    return DataSet(size, token_csv, out.getvalue(), tokens, basics)


def import_csv(registry: Registry, text: str) -> tuple[int, float]:
    """What `gatehouse device import` does with a file's text; (devices created, seconds)."""
    start = perf_counter()
    delimiter = header_delimiter(text)
    mapping = BulkImportMapping.from_header(read_header(text, delimiter), delimiter=delimiter)
    result = import_rows(registry, parse_rows(text, mapping), mapping)
    seconds = perf_counter() - start
    if result.errors:
        raise SystemExit(f"bench: the import failed: {result.errors_list[:5]}")
    return result.created, seconds


# --- stores ---------------------------------------------------------------------------------


class Store:
    """One store under test: fresh databases of its kind, and what to print about it."""

    name: str

    def new_database(self) -> str:
        raise NotImplementedError

    def settings(self) -> str:
        raise NotImplementedError

    def settle(self, url: str) -> None:
        """After an import: the housekeeping the database would do by itself soon after, done
        now, so that lookups measure a registry in its steady state."""

    def close(self) -> None:
        pass


class SqliteUnderTest(Store):
    name = "SQLite"

    def __init__(self, root: Path):
        self.root = root
        self._count = 0

    def new_database(self) -> str:
        self._count += 1
        directory = self.root / f"sqlite-{self._count}"
        directory.mkdir()
        return str(DatabaseUrl.sqlite(directory / "gatehouse.db"))

    def settings(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}: journal_mode WAL, synchronous NORMAL (gatehouse.storage.sqlite)"

    def settle(self, url: str) -> None:
        """The write-ahead log copied into the database file (what checkpoints do)."""
        with sqlite3.connect(DatabaseUrl.parse(url).sqlite_path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class PostgresUnderTest(Store):
    def __init__(self, root: Path, kind: str):
        from tests.postgres_cluster import PostgresCluster
        self.kind = kind
        self.name = "PostgreSQL" if kind == "durable" else f"PostgreSQL ({kind})"
        self.cluster = PostgresCluster.start_new(root, settings=POSTGRES_SETTINGS[kind])

    def new_database(self) -> str:
        return self.cluster.create_database()

    def settings(self) -> str:
        import psycopg
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            shown = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SHOWN_SETTINGS}
        return (f"{self.name}: " + ", ".join(f"{name} {value}" for name, value in shown.items())
                + f"; data directory {self.cluster.data_dir}, TCP 127.0.0.1")

    def settle(self, url: str) -> None:
        """What autovacuum does after a bulk insert (the visibility map, hint bits, statistics),
        and a checkpoint, so that no background pass runs during the lookups."""
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
            conn.execute("CHECKPOINT")

    def close(self) -> None:
        self.cluster.destroy()


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Timed:
    """Calls made, over how long, and each one's latency."""

    calls: int
    seconds: float
    latencies_ns: list[int] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile_us(self, q: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1000

    @classmethod
    def merged(cls, parts: list[Timed]) -> Timed:
        """Concurrent parts: their calls over the longest of their durations."""
        return cls(sum(p.calls for p in parts), max(p.seconds for p in parts),
                   [latency for p in parts for latency in p.latencies_ns])


def time_calls(call: Callable[[object], bool], keys: list, seconds: float, *, label: str,
               start: threading.Barrier | None = None) -> Timed:
    """`call(key)` over `keys`, each timed, until `seconds` have passed; a refused call (falsy)
    stops the benchmark. A warm-up over the first WARM_UP keys first (statement caches, page
    cache, the pool's connections), then the others, cycling (provisioning's keys, new names,
    must be more than the calls made)."""
    for key in keys[:WARM_UP]:
        if not call(key):
            raise SystemExit(f"bench: {label} refused a legitimate request; check the data set")
    if start is not None:
        start.wait()
    latencies = []
    n = len(keys)
    i = WARM_UP
    began = perf_counter()
    deadline = began + seconds
    while True:
        before = perf_counter_ns()
        ok = call(keys[i % n])
        latencies.append(perf_counter_ns() - before)
        if not ok:
            raise SystemExit(f"bench: {label} refused a legitimate request; check the data set")
        i += 1
        if i % 16 == 0 and perf_counter() >= deadline:
            return Timed(i - WARM_UP, perf_counter() - began, latencies)


def in_threads(open_registry: Callable[[], Registry], make_call, keys: list, seconds: float, *,
               label: str, threads: int = THREADS) -> Timed:
    """`threads` threads, each with a Registry of its own and its own share of `keys`,
    started together."""
    barrier = threading.Barrier(threads)
    parts: list[Timed | BaseException | None] = [None] * threads

    def worker(index: int) -> None:
        try:
            with open_registry() as registry:
                parts[index] = time_calls(make_call(registry), keys[index::threads], seconds, label=label,
                                          start=barrier)
        except BaseException as e:  # noqa: BLE001 (reported below)
            parts[index] = e
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    errors = [p for p in parts if isinstance(p, BaseException)]
    if errors:
        raise SystemExit(f"bench: {label} failed in a thread: {errors[0]!r}")
    return Timed.merged(parts)


# --- calls ----------------------------------------------------------------------------------


def mqtt_token_login(registry: Registry):
    return lambda key: registry.mqtt_login(key[0], key[1], None).accepted


def mqtt_basic_login(registry: Registry):
    return lambda key: registry.mqtt_login(*key).accepted


def http_token_login(registry: Registry):
    return lambda key: registry.token_login(key[1]) is not None


LOGINS = (("MQTT login, access token (mqtt_login)", mqtt_token_login, "tokens"),
          ("MQTT login, basic: client id + user + password (mqtt_login)", mqtt_basic_login, "basics"),
          ("HTTP/CoAP token_login", http_token_login, "tokens"))


def provision_call(registry: Registry):
    def call(name: str) -> bool:
        result = registry.provision(ProvisionRequest(PROVISION_KEY, PROVISION_SECRET, device_name=name),
                                    transport="bench")
        return result.status is ProvisionStatus.SUCCESS
    return call


def provision_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:08d}" for i in range(count)]


def provision_process(url: str, master: bytes, prefix: str, seconds: float, ready, start, answers) -> None:
    """A process of its own with a Registry of its own (spawned: nothing inherited)."""
    try:
        with Registry(DatabaseUrl.parse(url), ServerKey(master)) as registry:
            names = provision_names(prefix, PROVISION_NAMES)
            call = provision_call(registry)
            for name in names[:WARM_UP]:
                call(name)
            ready.put(None)
            start.wait()
            timed = time_calls(call, names[WARM_UP:], seconds, label="provisioning")
            answers.put((timed.calls, timed.seconds, timed.latencies_ns))
    except BaseException as e:  # noqa: BLE001 (sent to the parent)
        ready.put(None)
        answers.put(repr(e))


def in_processes(url: str, master: bytes, prefix: str, seconds: float, processes: int = THREADS) -> Timed:
    context = multiprocessing.get_context("spawn")
    ready, answers, start = context.Queue(), context.Queue(), context.Event()
    workers = [context.Process(target=provision_process,
                               args=(url, master, f"{prefix}-p{i}", seconds, ready, start, answers))
               for i in range(processes)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=120)
    start.set()
    parts = [answers.get(timeout=120 + seconds * 3) for _ in workers]
    for w in workers:
        w.join()
    errors = [p for p in parts if isinstance(p, str)]
    if errors:
        raise SystemExit(f"bench: provisioning failed in a process: {errors[0]}")
    return Timed.merged([Timed(*p) for p in parts])


# --- a store's measurements -----------------------------------------------------------------


@dataclass
class Figure:
    measurement: str
    unit: str
    value: float
    higher_is_better: bool = True


def sample(rng: random.Random, population: list, k: int) -> list:
    return rng.choices(population, k=k)


def lookups(open_registry, data: DataSet, rng: random.Random, seconds: float, *, threads: bool,
            label: str) -> list[Figure]:
    figures = []
    keys = {"tokens": sample(rng, data.tokens, 20_000), "basics": sample(rng, data.basics, 20_000)}
    with open_registry() as registry:
        for name, make_call, kind in LOGINS:
            timed = time_calls(make_call(registry), keys[kind], seconds, label=name)
            figures += timed_figures(f"{name}, 1 thread", "lookups/s", timed)
            print(f"  {label} {name}, 1 thread: {describe(timed)}", flush=True)
    if threads:
        for name, make_call, kind in LOGINS:
            timed = in_threads(open_registry, make_call, keys[kind], seconds, label=name)
            figures += timed_figures(f"{name}, {THREADS} threads", "lookups/s", timed)
            print(f"  {label} {name}, {THREADS} threads: {describe(timed)}", flush=True)
    return figures


def timed_figures(measurement: str, unit: str, timed: Timed) -> list[Figure]:
    return [Figure(measurement, unit, timed.rate),
            Figure(f"{measurement}, p50", "µs", timed.percentile_us(0.50), higher_is_better=False),
            Figure(f"{measurement}, p99", "µs", timed.percentile_us(0.99), higher_is_better=False)]


def describe(timed: Timed) -> str:
    return (f"{timed.calls:,} in {timed.seconds:.2f} s = {timed.rate:,.0f}/s, "
            f"p50 {timed.percentile_us(0.5):,.0f} µs, p99 {timed.percentile_us(0.99):,.0f} µs")


def build_registry(store: Store, master: bytes, data: DataSet) -> tuple[str, Figure]:
    """A fresh database of `data`'s devices, imported: its URL and the import's rate."""
    url = store.new_database()
    with Registry(DatabaseUrl.parse(url), ServerKey(master)) as registry:
        created, seconds = import_csv(registry, data.token_csv)
        basic_created, basic_seconds = import_csv(registry, data.basic_csv)
        if created != data.size or basic_created != len(data.basics):
            raise SystemExit(f"bench: the import created {created:,} + {basic_created:,} devices, "
                             f"not {data.size:,} + {len(data.basics):,}")
    rate = created / seconds
    start = perf_counter()
    store.settle(url)
    print(f"  {store.name}: imported {created:,} token devices in {seconds:.2f} s = {rate:,.0f} devices/s "
          f"(then {basic_created:,} MQTT basic devices in {basic_seconds:.2f} s; settled in "
          f"{perf_counter() - start:.1f} s)", flush=True)
    return url, Figure(f"bulk import, CSV of {data.size:,} token devices", "devices/s", rate)


def measure_store(store: Store, args, master: bytes, small: DataSet,
                  big_import: DataSet | None) -> tuple[list[Figure], str]:
    """Every measurement on `store`; and the URL of its registry of `small`'s devices."""
    rng = random.Random(args.seed)
    print(f"\n## {store.name}", flush=True)
    url, import_figure = build_registry(store, master, small)
    figures = [import_figure]
    if big_import is not None:
        with Registry(DatabaseUrl.parse(store.new_database()), ServerKey(master)) as registry:
            created, seconds = import_csv(registry, big_import.token_csv)
        print(f"  {store.name}: imported {created:,} token devices into a fresh database in {seconds:.2f} s = "
              f"{created / seconds:,.0f} devices/s", flush=True)
        figures.append(Figure(f"bulk import, CSV of {created:,} token devices", "devices/s", created / seconds))

    def open_registry() -> Registry:
        return Registry(DatabaseUrl.parse(url), ServerKey(master))

    figures += lookups(open_registry, small, rng, args.seconds, threads=True, label=f"{small.size:,} devices:")

    with open_registry() as registry:
        registry.create_profile("bench-allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=PROVISION_KEY,
                                secret=PROVISION_SECRET)
        timed = time_calls(provision_call(registry), provision_names("t1", PROVISION_NAMES), args.seconds,
                           label="provisioning")
    figures += timed_figures("provisioning (provision, new device), 1 thread", "requests/s", timed)
    print(f"  provisioning, 1 thread: {describe(timed)}", flush=True)
    timed = in_threads(open_registry, provision_call, provision_names("t4", THREADS * PROVISION_NAMES), args.seconds,
                       label="provisioning")
    figures += timed_figures(f"provisioning (provision, new device), {THREADS} threads", "requests/s", timed)
    print(f"  provisioning, {THREADS} threads: {describe(timed)}", flush=True)
    timed = in_processes(url, master, "p4", args.seconds)
    figures += timed_figures(f"provisioning (provision, new device), {THREADS} processes", "requests/s", timed)
    print(f"  provisioning, {THREADS} processes: {describe(timed)}", flush=True)
    return figures, url


def measure_million(store: Store, args, master: bytes, small: DataSet, small_url: str,
                    big: DataSet) -> tuple[list[Figure], list[Figure]]:
    """The import of `big`'s registry, and 1-thread lookups on it and on the small registry,
    interleaved (ROUNDS slots of each per kind, alternating, their calls merged), so that both
    meet the same load from whatever else runs on the machine. Returns (small's, big's)."""
    rng = random.Random(args.seed)
    print(f"\n## {store.name}, {big.size:,} devices", flush=True)
    url, import_figure = build_registry(store, master, big)
    registries = {"small": (small_url, small), "big": (url, big)}
    figures: dict[str, list[Figure]] = {"small": [], "big": [import_figure]}
    opened = {which: Registry(DatabaseUrl.parse(u), ServerKey(master)) for which, (u, _) in registries.items()}
    try:
        for name, make_call, kind in LOGINS:
            parts: dict[str, list[Timed]] = {"small": [], "big": []}
            keys = {which: sample(rng, getattr(data, kind), 20_000) for which, (_, data) in registries.items()}
            for _ in range(ROUNDS):
                for which in ("small", "big"):
                    parts[which].append(time_calls(make_call(opened[which]), keys[which], args.seconds / ROUNDS,
                                                   label=name))
            for which, (_, data) in registries.items():
                timed = Timed(sum(p.calls for p in parts[which]), sum(p.seconds for p in parts[which]),
                              [latency for p in parts[which] for latency in p.latencies_ns])
                figures[which] += timed_figures(f"{name}, 1 thread", "lookups/s", timed)
                print(f"  {data.size:,} devices: {name}, 1 thread (interleaved): {describe(timed)}", flush=True)
    finally:
        for registry in opened.values():
            registry.close()
    return figures["small"], figures["big"]


# --- report ---------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def render(row):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    return "\n".join([render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(render, rows)])


def comparison_table(by_store: dict[str, list[Figure]]) -> tuple[str, list[results.Figure]]:
    """One row a measurement: each store's figure, and each PostgreSQL's ratio to SQLite."""
    names = list(by_store)
    base_name, others = names[0], names[1:]
    values = {name: {f.measurement: f for f in figures} for name, figures in by_store.items()}
    header = ["measurement", "unit", base_name]
    for name in others:
        header += [name, f"{name} / {base_name}"]
    rows, summary = [], []
    for f in by_store[base_name]:
        row = [f.measurement, f.unit, fmt(f.value)]
        for name in others:
            other = values[name].get(f.measurement)
            r = ratio(other.value if other else None, f.value)
            row += [fmt(other.value if other else None), "—" if r is None else f"{r:.3g}"]
            if other is not None:
                summary.append(results.Figure(f"{name}: {f.measurement}", other.value, f.unit,
                                              f"{base_name}, same run", f.value, r))
        rows.append(row)
    return markdown(header, rows), summary


def million_table(small: dict[str, list[Figure]], big: dict[str, list[Figure]], small_size: int,
                  big_size: int) -> tuple[str, list[results.Figure]]:
    header = ["store", "measurement", "unit", f"{small_size:,} devices", f"{big_size:,} devices",
              "ratio (big / small)", "target", "met"]
    rows, summary = [], []
    for store, figures in big.items():
        small_values = {f.measurement: f.value for f in small.get(store, [])}
        p99s = {f.measurement: f.value for f in figures if f.measurement.endswith("p99")}
        for f in figures:
            if f.measurement.startswith("bulk import"):
                met = f.value >= IMPORT_TARGET
                rows.append([store, f.measurement, f.unit, "", fmt(f.value), "", f">= {IMPORT_TARGET:,}",
                             "yes" if met else "NO"])
                summary.append(results.Figure(f"{store}: {f.measurement}", f.value, f.unit,
                                              target=f">= {IMPORT_TARGET:,}", met=met))
                continue
            base = small_values.get(f.measurement)
            r = ratio(f.value, base)
            target, met = "", None
            if f.measurement in p99s:
                target = f"< {P99_TARGET_US:,.0f} µs, ratio <= {P99_GROWTH_TARGET}"
                met = f.value < P99_TARGET_US and r is not None and r <= P99_GROWTH_TARGET
            rows.append([store, f.measurement, f.unit, fmt(base), fmt(f.value), "—" if r is None else f"{r:.3g}",
                         target, "" if met is None else ("yes" if met else "NO")])
            summary.append(results.Figure(f"{store}, {big_size:,} devices: {f.measurement}", f.value, f.unit,
                                          f"the same at {small_size:,} devices", base, r, target, met))
    return markdown(header, rows), summary


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000-device registries, a 20,000-row import, 0.5 s a measurement")
    parser.add_argument("--devices", type=int, help="token devices of the lookup registry (default 10,000)")
    parser.add_argument("--import-rows", type=int,
                        help="rows of the separate import measurement (default 100,000; 0: none)")
    parser.add_argument("--seconds", type=float, help="duration of each measurement (default 3)")
    parser.add_argument("--million", action="store_true",
                        help="also the registries of --million-devices devices: their import and lookups")
    parser.add_argument("--million-devices", type=int, default=1_000_000, help="(default 1,000,000)")
    parser.add_argument("--postgres", choices=("durable", "fsync-off", "both"), default="durable",
                        help="PostgreSQL server settings (see the module's docstring; default durable)")
    parser.add_argument("--only-postgres", action="store_true", help="leave SQLite out (no ratios)")
    parser.add_argument("--seed", type=int, default=1, help="of the data sets and key samples (default 1)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary directory goes")
    results.add_json_option(parser)
    args = parser.parse_args(argv)
    args.devices = args.devices or (2_000 if args.quick else 10_000)
    args.import_rows = args.import_rows if args.import_rows is not None else (20_000 if args.quick else 100_000)
    args.seconds = args.seconds or (0.5 if args.quick else 3.0)

    wall = perf_counter()
    temp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-pg-", dir=args.tmpdir))
    stores: list[Store] = []
    try:
        print("# Gatehouse on PostgreSQL beside SQLite")
        print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
        print(f"cpu:      {cpu_model()} ({usable_cores()} cores)")
        print(f"python:   {platform.python_implementation()} {platform.python_version()}")
        print(f"platform: {platform.platform()}")
        print(f"load:     {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (1, 5, 15 min) at the start")
        print(f"temp dir: {temp} ({shutil.disk_usage(temp).free / 1e9:,.0f} GB free)")
        print(f"sizes:    {args.devices:,}-device registries, {args.import_rows:,}-row import, "
              f"{args.seconds:g} s a measurement" + (f", {args.million_devices:,}-device registries" if args.million
                                                      else ""))
        if not args.only_postgres:
            stores.append(SqliteUnderTest(temp))
        kinds = ("durable", "fsync-off") if args.postgres == "both" else (args.postgres,)
        for kind in kinds:
            stores.append(PostgresUnderTest(temp, kind))
        print("\nSettings:")
        for store in stores:
            print(f"- {store.settings()}")

        master = secrets.token_bytes(32)
        rng = random.Random(args.seed)
        start = perf_counter()
        small = build_data_set(args.devices, rng, "small")
        big_import = build_data_set(args.import_rows, rng, "import") if args.import_rows else None
        print(f"\ndata sets built in {perf_counter() - start:.1f} s", flush=True)

        by_store, small_urls = {}, {}
        for store in stores:
            by_store[store.name], small_urls[store.name] = measure_store(store, args, master, small, big_import)
        million, small_registry_lookups = {}, {}
        if args.million:
            big = build_data_set(args.million_devices, rng, "million")
            for store in stores:
                small_registry_lookups[store.name], million[store.name] = measure_million(
                    store, args, master, small, small_urls[store.name], big)
        print("\n## Summary" + (" (ratio = PostgreSQL / SQLite)" if len(stores) > 1 else "") + "\n")
        table, summary = comparison_table(by_store) if len(stores) > 1 else (
            markdown(["measurement", "unit", stores[0].name],
                     [[f.measurement, f.unit, fmt(f.value)] for f in by_store[stores[0].name]]), [])
        print(table)
        if million:
            print(f"\n## {args.million_devices:,} devices against {args.devices:,} (1 thread, measured interleaved)\n")
            big_table, big_summary = million_table(small_registry_lookups, million, args.devices,
                                                   args.million_devices)
            print(big_table)
            summary += big_summary
        print("\nSettings:")
        for store in stores:
            print(f"- {store.settings()}")
        print(f"load:     {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (1, 5, 15 min) at the end")
        results.write(args.json, f"PostgreSQL beside SQLite (bench/postgresql.py, {args.devices:,} devices"
                      + (f", {args.million_devices:,}" if args.million else "") + ")", summary)
    finally:
        for store in stores:
            store.close()
        shutil.rmtree(temp, ignore_errors=True)
    print(f"\nbench wall time: {perf_counter() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
