#!/usr/bin/env python3
"""Registry benchmark: bulk import and login lookups on a registry of N devices.

    .venv/bin/python bench/registry.py                  # 100,000 devices (a few minutes)
    .venv/bin/python bench/registry.py --devices 2000   # quick run

Every figure is printed next to a baseline measured in the same run on the same machine, and
as a ratio to it; nothing is asserted about timings (correctness of the logins is checked,
so that a fast figure cannot come from refused logins).

1. Import: a ThingsBoard-format CSV of N devices (ACCESS_TOKEN, MQTT basic with client id +
   user name + password, X509 with its own leaf certificate each) through
   `gatehouse.bulk_import.import_devices` on a fresh `Registry.initialise(...)`.
   Baseline: one sqlite3 `executemany` INSERT of the same N (name, token) rows into a
   table with UNIQUE indexes on both columns, in one transaction. The leaf certificates
   are issued up front (`gatehouse.pki.issue_certificate`, one CA) and that time is
   reported on its own, outside the import rate.
2. Logins on the imported registry, each a time-bounded loop (--seconds) over keys drawn
   at random up front: MQTT access token, MQTT basic, MQTT X.509, HTTP/CoAP token_login.
   Baseline: `SELECT device_id FROM t WHERE token = ?` on the baseline table.

No third-party dependencies beyond the project's own; temporary files are removed.
"""
from __future__ import annotations

import argparse
import base64
import cProfile
import csv
import io
import platform
import pstats
import random
import shlex
import sqlite3
import string
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Benchmark the working tree this file belongs to, installed or not.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)

from gatehouse import certificates, pki  # noqa: E402
from gatehouse.bulk_import import BulkImportMapping, import_devices, read_header  # noqa: E402
from gatehouse.credentials import certificate_thumbprint, sha3_hash  # noqa: E402
from gatehouse.registry import Registry  # noqa: E402
import results  # noqa: E402  (bench/results.py, beside this file)
from machine import cpu_model, usable_cores  # noqa: E402  (bench/machine.py, beside this file)

perf_counter = time.perf_counter

ALPHANUMERICS = string.ascii_letters + string.digits
HEADER = ["NAME", "TYPE", "ACCESS_TOKEN", "MQTT_CLIENT_ID", "MQTT_USER_NAME", "MQTT_PASSWORD", "X509"]
PROFILE_NAME = "default"  # the profile Registry creates; named in TYPE as ThingsBoard CSVs do

BASELINE_SCHEMA = """
CREATE TABLE t (
    device_id INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE,
    token     TEXT NOT NULL UNIQUE
)"""
BASELINE_LOOKUP = "SELECT device_id FROM t WHERE token = ?"


# --- machine --------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """Best effort: the filesystem type the temp dir lives on (tmpfs and disk differ a lot)."""
    try:
        best, fstype = "", "?"
        target = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                        best, fstype = mount, parts[2]
        return f"{fstype} (mounted at {best})" if best else "?"
    except OSError:
        return "?"


def print_machine(args, temp_root: Path) -> None:
    print("# Gatehouse registry benchmark")
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpu:      {cpu_model()}")
    print(f"cores:    {usable_cores()}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"sqlite:   {sqlite3.sqlite_version}")
    print(f"platform: {platform.platform()}")
    print(f"temp dir: {temp_root} on {filesystem_of(temp_root)}")
    print(f"devices:  {args.devices:,} (seed {args.seed}, {args.seconds:g} s per lookup measurement)")
    print()


# --- data set -------------------------------------------------------------------------------


@dataclass
class DataSet:
    rows: list[list[str]]                      # CSV rows, HEADER order
    baseline_rows: list[tuple[str, str]]       # (name, credentialsId) per device
    token_keys: list[tuple[str, str]]          # (client id, token)
    basic_keys: list[tuple[str, str, str]]     # (client id, user name, password)
    x509_keys: list[tuple[str, bytes]]         # (client id, certificate DER)
    counts: dict[str, int]
    cert_seconds: float


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(ALPHANUMERICS, k=length))


def issue_leaf_certificates(count: int, names: list[str]) -> tuple[list[bytes], float]:
    """`count` client certificates from one CA, each with its own key; returns DERs and seconds."""
    start = perf_counter()
    ca_cert, ca_key = pki.create_ca("Gatehouse Bench CA")
    ders = []
    for name in names[:count]:
        cert, _key = pki.issue_certificate(ca_cert, ca_key, name)
        ders.append(certificates.der_bytes(cert))
    return ders, perf_counter() - start


def build_data_set(n: int, *, rng: random.Random, mqtt_share: float, x509_share: float, max_certs: int) -> DataSet:
    x509_count = min(round(n * x509_share), max_certs)
    basic_count = min(round(n * mqtt_share), n - x509_count)
    token_count = n - x509_count - basic_count
    kinds = ["x509"] * x509_count + ["basic"] * basic_count + ["token"] * token_count
    rng.shuffle(kinds)

    names = [f"bench-device-{i:07d}" for i in range(n)]
    x509_names = [name for name, kind in zip(names, kinds) if kind == "x509"]
    ders, cert_seconds = issue_leaf_certificates(x509_count, x509_names)
    der_of = dict(zip(x509_names, ders))

    rows, baseline_rows = [], []
    token_keys, basic_keys, x509_keys = [], [], []
    seen: set[str] = set()
    for name, kind in zip(names, kinds):
        client_id = f"mqtt-{name}"
        token = client = user = password = x509 = ""
        if kind == "token":
            token = random_text(rng, 20)  # ThingsBoard's generated-token shape
            while token in seen:
                token = random_text(rng, 20)
            credentials_id = token
            token_keys.append((client_id, token))
        elif kind == "basic":
            client, user, password = client_id, f"user-{random_text(rng, 12)}", random_text(rng, 16)
            credentials_id = sha3_hash(client, user)
            basic_keys.append((client, user, password))
        else:
            der = der_of[name]
            x509 = base64.b64encode(der).decode("ascii")  # ThingsBoard's one-line credentialsValue
            credentials_id = certificate_thumbprint(der)
            x509_keys.append((client_id, der))
        seen.add(credentials_id)
        rows.append([name, PROFILE_NAME, token, client, user, password, x509])
        baseline_rows.append((name, credentials_id))
    counts = {"ACCESS_TOKEN": token_count, "MQTT_BASIC": basic_count, "X509_CERTIFICATE": x509_count}
    return DataSet(rows, baseline_rows, token_keys, basic_keys, x509_keys, counts, cert_seconds)


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


# --- measurements ---------------------------------------------------------------------------


def baseline_database(path: Path) -> sqlite3.Connection:
    """The same connection settings as gatehouse.storage.SqliteStore: WAL, synchronous NORMAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(BASELINE_SCHEMA)
    return conn


def baseline_import(conn: sqlite3.Connection, rows: list[tuple[str, str]]) -> float:
    start = perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t (name, token) VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    return perf_counter() - start


def time_bounded(call, keys: list, seconds: float, chunk: int = 64) -> tuple[int, float, int]:
    """Call `call(key)` over `keys` (cycling) until `seconds` have passed; the clock is read
    once per chunk. Returns (calls, elapsed seconds, calls that returned a falsy result)."""
    n = len(keys)
    done = misses = 0
    for key in keys[:min(n, chunk)]:  # warm-up: statement cache, page cache
        call(key)
    start = perf_counter()
    deadline = start + seconds
    while True:
        for i in range(done, done + chunk):
            if not call(keys[i % n]):
                misses += 1
        done += chunk
        now = perf_counter()
        if now >= deadline:
            return done, now - start, misses


def sample(rng: random.Random, population: list, k: int) -> list:
    return rng.choices(population, k=k) if population else []


# --- report ---------------------------------------------------------------------------------


IMPORT_MEASUREMENT = "bulk import (import_devices)"
# Issue 15's import target, in devices/s: an absolute rate, so it depends on the machine; the
# baseline column says how fast this one is (the target was set where the baseline ran 276,000).
IMPORT_TARGET = 20_000


def target_of(line: Line) -> dict:
    if line.measurement != IMPORT_MEASUREMENT:
        return {}
    return {"target": f">= {IMPORT_TARGET:,}", "met": line.figure >= IMPORT_TARGET}


@dataclass
class Line:
    measurement: str
    figure: float | None
    unit: str
    baseline: float | None = None
    baseline_unit: str = ""

    def cells(self) -> list[str]:
        figure = "—" if self.figure is None else fmt(self.figure)
        if self.baseline is None:
            return [self.measurement, figure, self.unit, "—", "—"]
        ratio = self.figure / self.baseline if self.figure is not None and self.baseline else None
        ratio_text = "—" if ratio is None else ratio_text_of(ratio)
        return [self.measurement, figure, self.unit, f"{fmt(self.baseline)} {self.baseline_unit}", ratio_text]


BASELINE_NAMES = {"rows/s": "plain SQLite executemany of (name, token), one transaction",
                  "lookups/s": "plain SQLite indexed SELECT by token"}


def ratio_text_of(ratio: float) -> str:
    """3 significant digits, plus "1/x" when the figure is below its baseline."""
    return f"{ratio:.3g}" + (f" (1/{1 / ratio:,.0f})" if 0 < ratio < 1 else "")


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def markdown_table(lines: list[Line]) -> str:
    header = ["measurement", "figure", "unit", "baseline", "ratio"]
    body = [line.cells() for line in lines]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def render(row):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(header), separator, *(render(row) for row in body)])


# --- main -----------------------------------------------------------------------------------


def run(args, temp_root: Path) -> list[Line]:
    rng = random.Random(args.seed)
    lines: list[Line] = []
    n = args.devices

    print(f"Generating {n:,} devices ...", flush=True)
    start = perf_counter()
    data = build_data_set(n, rng=rng, mqtt_share=args.mqtt_share, x509_share=args.x509_share,
                          max_certs=args.max_certs)
    generation = perf_counter() - start
    mix = ", ".join(f"{kind} {count:,} ({count / n:.1%})" for kind, count in data.counts.items())
    print(f"  credential mix: {mix}")
    certs = data.counts["X509_CERTIFICATE"]
    cert_rate = certs / data.cert_seconds if certs else None
    print(f"  {certs:,} leaf certificates (P-256, one CA) issued in {data.cert_seconds:.2f} s"
          + (f" = {cert_rate:,.0f} certs/s" if cert_rate else ""))
    print(f"  data set built in {generation:.2f} s (certificates included)")
    lines.append(Line(f"X.509 leaf certs issued up front ({certs:,}; not in import)", cert_rate, "certs/s"))

    csv_path = temp_root / "devices.csv"
    write_csv(csv_path, data.rows)
    print(f"  CSV: {csv_path.stat().st_size / 1e6:.1f} MB")

    # Baseline first, in its own file in the same temp dir.
    conn = baseline_database(temp_root / "baseline.db")
    base_seconds = baseline_import(conn, data.baseline_rows)
    base_rate = n / base_seconds
    print(f"\nBaseline import: executemany of {n:,} (name, token) rows, one transaction: "
          f"{base_seconds:.3f} s = {base_rate:,.0f} rows/s")

    start = perf_counter()
    registry = Registry.initialise(temp_root / "registry")
    init_seconds = perf_counter() - start
    print(f"Registry.initialise (database, server key, development PKI): {init_seconds:.3f} s")
    try:
        text = csv_path.read_text(encoding="utf-8")
        mapping = BulkImportMapping.from_header(read_header(text))
        start = perf_counter()
        result = import_devices(registry, text, mapping)
        import_seconds = perf_counter() - start
        import_rate = n / import_seconds
        print(f"Gatehouse import: import_devices of {n:,} rows: {import_seconds:.3f} s = {import_rate:,.0f} devices/s"
              f" (ratio to baseline {import_rate / base_rate:.4f}, {base_rate / import_rate:,.1f}x slower)")
        print(f"  result: created {result.created:,}, updated {result.updated:,}, errors {result.errors:,}")
        if result.errors or result.created != n:
            for error in result.errors_list[:10]:
                print(f"  {error}")
            raise SystemExit("bench: the import did not create every device; figures would be meaningless")
        lines.append(Line(IMPORT_MEASUREMENT, import_rate, "devices/s", base_rate, "rows/s"))

        # --- lookups ------------------------------------------------------------------------
        k = args.keys
        base_keys = [(token,) for _, token in sample(rng, data.token_keys, k)]
        token_keys = sample(rng, data.token_keys, k)
        basic_keys = sample(rng, data.basic_keys, k)
        x509_keys = sample(rng, data.x509_keys, k)

        def verify(label, call, keys):
            bad = sum(1 for key in keys[:200] if not call(key))
            if bad:
                raise SystemExit(f"bench: {bad} of {min(200, len(keys))} {label} were refused; check the data set")

        measurements = [
            ("MQTT login, access token", "login(client_id, token, None)",
             lambda key: registry.mqtt_login(key[0], key[1], None).accepted, token_keys),
            ("MQTT login, basic (client id + user + password)", "login(client_id, user, password)",
             lambda key: registry.mqtt_login(*key).accepted, basic_keys),
            ("MQTT login, X.509 certificate", "login(client_id, None, None, cert_der=...)",
             lambda key: registry.mqtt_login(key[0], None, None, cert_der=key[1]).accepted, x509_keys),
            ("HTTP/CoAP token_login", "token_login(token)",
             lambda key: registry.token_login(key[1]) is not None, token_keys),
        ]
        cursor = conn.cursor()

        def base_call(key):
            return cursor.execute(BASELINE_LOOKUP, key).fetchone()

        verify("baseline lookups", base_call, base_keys)
        calls, seconds, misses = time_bounded(base_call, base_keys, args.seconds)
        base_lookup = calls / seconds
        print(f"\nBaseline lookup: {BASELINE_LOOKUP!r}: {calls:,} in {seconds:.2f} s = {base_lookup:,.0f} lookups/s"
              + (f" ({misses} misses!)" if misses else ""))
        lines.append(Line("baseline: indexed SELECT by token", base_lookup, "lookups/s"))
        for label, call_text, call, keys in measurements:
            if not keys:
                print(f"{label}: skipped (no such devices at this size)")
                continue
            verify(label, call, keys)
            calls, seconds, misses = time_bounded(call, keys, args.seconds)
            rate = calls / seconds
            print(f"{label}: {call_text}: {calls:,} in {seconds:.2f} s = {rate:,.0f} logins/s = "
                  f"{1e6 / rate:,.0f} µs each (ratio {rate / base_lookup:.4f})"
                  + (f" ({misses} refused!)" if misses else ""))
            lines.append(Line(label, rate, "logins/s", base_lookup, "lookups/s"))
    finally:
        registry.close()
        conn.close()

    if args.profile:
        profile_import(args, temp_root, csv_path)
    return lines


def profile_import(args, temp_root: Path, csv_path: Path) -> None:
    """A second import of the same CSV into another fresh registry, under cProfile (slower
    than the timed run; read it for where the time goes, not for the rate)."""
    text = csv_path.read_text(encoding="utf-8")
    if args.profile_rows < args.devices:
        text = "".join(text.splitlines(keepends=True)[:args.profile_rows + 1])
    mapping = BulkImportMapping.from_header(read_header(text))
    registry = Registry.initialise(temp_root / "registry-profiled")
    try:
        profiler = cProfile.Profile()
        start = perf_counter()
        profiler.enable()
        result = import_devices(registry, text, mapping)
        profiler.disable()
        seconds = perf_counter() - start
    finally:
        registry.close()
    print(f"\n## cProfile of import_devices, {result.created:,} rows, {seconds:.2f} s under the profiler")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(args.profile_top)
    stats.sort_stats("cumulative").print_stats(args.profile_top)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000, help="registry size (CSV rows)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each lookup measurement")
    parser.add_argument("--mqtt-share", type=float, default=0.15, help="share of MQTT basic devices")
    parser.add_argument("--x509-share", type=float, default=0.05, help="share of X.509 devices (before --max-certs)")
    parser.add_argument("--max-certs", type=int, default=2000,
                        help="cap on X.509 devices, one issued certificate each; the rest get access tokens")
    parser.add_argument("--keys", type=int, default=100_000, help="random keys drawn up front per lookup kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile a second import (cProfile) into a fresh registry")
    parser.add_argument("--profile-rows", type=int, default=None, help="rows of the profiled import (default: all)")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profile ordering")
    results.add_json_option(parser)
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if not (0 <= args.mqtt_share <= 1 and 0 <= args.x509_share <= 1 and args.mqtt_share + args.x509_share <= 1):
        parser.error("--mqtt-share and --x509-share must be shares between 0 and 1 with a sum of at most 1")
    if args.profile_rows is None:
        args.profile_rows = args.devices

    wall = perf_counter()
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-", dir=args.tmpdir) as temp:
        temp_root = Path(temp)
        print_machine(args, temp_root)
        lines = run(args, temp_root)
    print(f"\n## Summary ({args.devices:,} devices; ratio = figure / baseline)\n")
    print(markdown_table(lines))
    results.write(args.json, f"registry (bench/registry.py, {args.devices:,} devices)", [
        results.Figure(line.measurement, line.figure, line.unit, BASELINE_NAMES.get(line.baseline_unit, ""),
                       line.baseline, line.figure / line.baseline if line.baseline else None, **target_of(line))
        for line in lines if line.figure is not None])
    print(f"\nbench wall time: {perf_counter() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
