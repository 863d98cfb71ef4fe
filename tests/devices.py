"""Test data for the broker tests: unique names (the broker fixtures are shared between tests),
token and X.509 devices in a running broker's registry, and what is stored for them."""
from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

from gatehouse.credentials import AccessToken
from gatehouse.data_dir import DataDir
from gatehouse.device_activity import ACTIVITY_ATTRIBUTES
from gatehouse.models import AttributeScope, Device
from gatehouse.registry import Registry


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token_device(broker, prefix: str = "dev") -> tuple[Device, str]:
    """A new device with a generated access token in `broker`'s registry: (device, token)."""
    token = unique("TOKEN")
    with Registry.open(broker.data_dir) as registry:
        device = registry.create_device(unique(prefix), credentials=AccessToken(token))
    return device, token


def gatehouse_cli(broker, *args: str) -> str:
    """`gatehouse ARGS` on `broker`'s data dir, in another process: its output."""
    result = subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), *args],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"gatehouse {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def issue_certificate(broker, name: str, out: Path) -> tuple[Path, Path]:
    gatehouse_cli(broker, "pki", "issue", name, "--out", str(out))
    cert, key = out / f"{name}.pem", out / f"{name}.key"
    assert cert.is_file() and key.is_file()
    return cert, key


def x509_device(broker, tmp_path: Path) -> tuple[str, Path, Path]:
    """A device registered with a certificate from the development CA: (device id, cert, key)."""
    name = unique("x509")
    cert, key = issue_certificate(broker, name, tmp_path / "certs")
    created = json.loads(gatehouse_cli(broker, "device", "create", name, "--cert", str(cert), "--json"))
    assert created["credentials"]["credentialsType"] == "X509_CERTIFICATE"
    return created["device"]["id"]["id"], cert, key


def latest_telemetry(broker, device_id: str) -> dict:
    """The device's latest telemetry, {key: {"ts", "value"}}, from `broker`'s registry."""
    with Registry.open(broker.data_dir) as registry:
        return registry.latest_telemetry(device_id)


def attributes(broker, device_id: str, scope: AttributeScope) -> dict:
    with Registry.open(broker.data_dir) as registry:
        return registry.get_attributes(device_id, scope)


# Device activity (gatehouse.device_activity) is stored a second after any accepted request,
# so a count taken to show that a refused request stored nothing leaves it out.
_NOT_ACTIVITY = "NOT (scope = 'SERVER_SCOPE' AND key IN ({}))".format(", ".join(f"'{k}'" for k in ACTIVITY_ATTRIBUTES))


def stored_row_counts(database: sqlite3.Connection, tables: Iterable[str]) -> dict[str, int]:
    """Rows per table, device activity left out: unchanged means nothing was stored."""
    return {table: database.execute(f"SELECT count(*) FROM {table}"
                                    + (f" WHERE {_NOT_ACTIVITY}" if table == "attribute" else "")).fetchone()[0]
            for table in tables}


def database(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(DataDir(data_dir).sqlite_file)


def stored_values(data_dir: Path, key: str) -> set[tuple[str, int]]:
    """(device name, value) of every stored telemetry point of `key` (history, not just latest)."""
    with contextlib.closing(database(data_dir)) as db:
        return {(name, int(value)) for name, value in db.execute(
            "SELECT d.name, h.value FROM telemetry_history h JOIN device d ON d.id = h.device_id WHERE h.key = ?",
            [key])}


def token_devices(data_dir: Path, prefix: str, count: int) -> dict[str, str]:
    """`count` devices with access tokens: name -> token."""
    tokens = {f"{prefix}-{i}": unique("TOKEN") for i in range(count)}
    with Registry.open(data_dir) as registry, registry.batch():
        for name, token in tokens.items():
            registry.create_device(name, credentials=AccessToken(token))
    return tokens
