"""Bulk device import from CSV in ThingsBoard's format (SPEC §8): one code path for
`gatehouse device import`, `POST /api/device/bulk_import` and the web UI.

Rows are applied in batches, one transaction per batch (Registry.upsert_devices): a bad row is
reported ("Line N: ...") and leaves nothing behind, the good rows around it are kept, and
re-running the same file updates devices instead of duplicating them. An import shares the
database's write lock with live traffic (_LockSharing).
"""
from __future__ import annotations

import csv
import enum
import gc
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .credentials import AccessToken, MqttBasic, NewCredentials, X509Certificate
from .errors import GatehouseError, ValidationError
from .models import AttributeScope
from .payloads import KvEntry, PayloadError, kv_entries
from .registry import DeviceUpsert, Registry

BATCH_SIZE = 2000  # rows per transaction while the import is the only writer
# While other connections write too (the broker's telemetry), an import gives way: it holds
# SQLite's one write lock for at most SHARED_LOCK_SECONDS at a time and SHARED_LOCK_SHARE of
# the time, so that devices' messages never wait long for it (bench/soak.py --only import).
SHARED_LOCK_SECONDS = 0.01
SHARED_LOCK_SHARE = 0.25
QUIET_SECONDS = 1.0
MIN_BATCH_SIZE = 10


class ColumnType(str, enum.Enum):
    NAME = "NAME"
    TYPE = "TYPE"
    LABEL = "LABEL"
    DESCRIPTION = "DESCRIPTION"
    IS_GATEWAY = "IS_GATEWAY"
    SHARED_ATTRIBUTE = "SHARED_ATTRIBUTE"
    SERVER_ATTRIBUTE = "SERVER_ATTRIBUTE"
    TIMESERIES = "TIMESERIES"
    ACCESS_TOKEN = "ACCESS_TOKEN"
    X509 = "X509"
    MQTT_CLIENT_ID = "MQTT_CLIENT_ID"
    MQTT_USER_NAME = "MQTT_USER_NAME"
    MQTT_PASSWORD = "MQTT_PASSWORD"


_KEYED = {ColumnType.SHARED_ATTRIBUTE, ColumnType.SERVER_ATTRIBUTE, ColumnType.TIMESERIES}


@dataclass(frozen=True)
class Column:
    type: ColumnType
    key: str | None = None


def _column_type(name: str) -> ColumnType:
    try:
        return ColumnType(name.strip().upper().replace(" ", "_"))
    except ValueError:
        supported = ", ".join(t.value for t in ColumnType)
        raise ValidationError(f"Unsupported column type {name!r} (supported: {supported})") from None


@dataclass(frozen=True)
class BulkImportMapping:
    columns: tuple[Column, ...]
    delimiter: str = ","
    update: bool = True
    header: bool = True

    def __post_init__(self):
        types = [c.type for c in self.columns]
        if ColumnType.NAME not in types:
            raise ValidationError("The mapping needs a NAME column")
        for column in self.columns:
            if column.type in _KEYED and not column.key:
                raise ValidationError(f"A {column.type.value} column needs a key")
        if len(self.delimiter) != 1:
            raise ValidationError("The delimiter must be one character")

    @classmethod
    def from_json(cls, obj: object) -> BulkImportMapping:
        """ThingsBoard's `mapping` object: {"columns":[{"type":..,"key":..}], "delimiter", "update",
        "header"}, read as strictly as ThingsBoard's JSON mapping reads it (column types exactly
        as the enum spells them); null or absent options take their defaults."""
        if not isinstance(obj, dict) or not isinstance(obj.get("columns"), list):
            raise ValidationError("mapping.columns must be a list")
        columns = []
        for column in obj["columns"]:
            if not isinstance(column, dict) or not isinstance(column.get("type"), str):
                raise ValidationError("each mapping column needs a type")
            if column["type"] not in ColumnType.__members__:
                raise ValidationError(f"Unsupported column type {column['type']!r} "
                                      f"(supported: {', '.join(t.value for t in ColumnType)})")
            if not isinstance(column.get("key"), (str, type(None))):
                raise ValidationError("a mapping column's key must be a string")
            columns.append(Column(ColumnType(column["type"]), column.get("key") or None))
        delimiter = obj.get("delimiter")
        if not isinstance(delimiter, (str, type(None))):
            raise ValidationError("The delimiter must be one character")
        for option in ("update", "header"):
            if not isinstance(obj.get(option), (bool, type(None))):
                raise ValidationError(f"mapping.{option} must be true or false")
        return cls(tuple(columns), delimiter="," if delimiter is None else delimiter,
                   update=obj.get("update") is not False, header=obj.get("header") is not False)

    @classmethod
    def from_header(cls, cells: Iterable[str], *, delimiter: str = ",", update: bool = True) -> BulkImportMapping:
        """The CLI's convention: each header cell names its column type (`NAME`, `access token`,
        ...), attribute and telemetry columns as `SHARED_ATTRIBUTE:key`, `SERVER_ATTRIBUTE:key`,
        `TIMESERIES:key`."""
        columns = []
        for cell in cells:
            type_name, _, key = cell.partition(":")
            try:
                columns.append(Column(_column_type(type_name), key.strip() or None))
            except ValidationError as e:
                other = next((d for d in HEADER_DELIMITERS if d != delimiter and d in cell), None)
                if other is None:
                    raise
                raise ValidationError(f"{e} — is the file separated by {other!r} rather than {delimiter!r}? "
                                      f"Name its delimiter with --delimiter {other!r}") from None
        return cls(tuple(columns), delimiter=delimiter, update=update, header=True)


@dataclass
class BulkImportResult:
    created: int = 0
    updated: int = 0
    errors: int = 0
    errors_list: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"created": self.created, "updated": self.updated, "errors": self.errors,
                "errorsList": self.errors_list}


def _csv_reader(text: str, delimiter: str):
    # newline="" as the csv module wants: it then takes a lone CR for the end of a line, as
    # ThingsBoard's CSV parser does, instead of refusing it inside an unquoted cell.
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


# What spreadsheets write: a comma, or a semicolon where the comma is the decimal separator.
HEADER_DELIMITERS = (",", ";", "\t", "|")


def header_delimiter(text: str) -> str:
    """The delimiter of a file in the CLI's header convention: the first of HEADER_DELIMITERS
    that splits its header into column types only; "," when none does (the error then names
    the cell that is no column type)."""
    for delimiter in HEADER_DELIMITERS:
        try:
            cells = read_header(text, delimiter)
            if cells and all(_column_type(cell.partition(":")[0]) for cell in cells):
                return delimiter
        except ValidationError:
            continue
    return ","


def read_header(text: str, delimiter: str = ",") -> list[str]:
    try:
        return next(_csv_reader(text, delimiter), [])
    except csv.Error as e:
        raise ValidationError(f"Line 1: {e}") from None


def parse_rows(text: str, mapping: BulkImportMapping) -> list[tuple[int, list[str]]]:
    """The data rows with the physical line each starts on (a quoted PEM cell spans lines);
    ValidationError for text that is no CSV (a cell over the csv module's size limit, say)."""
    reader = _csv_reader(text, mapping.delimiter)
    rows = []
    line = 1
    try:
        if mapping.header:
            next(reader, None)
        while True:
            line = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                return rows
            if any(cell.strip() for cell in cells):
                rows.append((line, cells))
    except csv.Error as e:
        raise ValidationError(f"Line {line}: {e}") from None


# Told, once its batch has committed, which shared attributes an import wrote to a device that
# already existed (and may be connected): (device id, entries).
SharedAttributesWritten = Callable[[str, tuple[KvEntry, ...]], None]


def import_devices(registry: Registry, text: str, mapping: BulkImportMapping, *,
                   progress: Callable[[int], None] | None = None,
                   shared_attributes_written: SharedAttributesWritten | None = None) -> BulkImportResult:
    return import_rows(registry, parse_rows(text, mapping), mapping, progress=progress,
                       shared_attributes_written=shared_attributes_written)


def import_rows(registry: Registry, rows: list[tuple[int, list[str]]], mapping: BulkImportMapping, *,
                progress: Callable[[int], None] | None = None,
                shared_attributes_written: SharedAttributesWritten | None = None) -> BulkImportResult:
    """Import rows from `parse_rows`; `progress(n)` is called after each batch with its size.
    A server pushes what `shared_attributes_written` is told to connected devices, as
    ThingsBoard does; the CLI, which has no connection to them, passes nothing."""
    result = BulkImportResult()
    pace = _LockSharing(registry)
    start = 0
    # The rows live until the end: the cyclic garbage collector's full passes went over all of
    # them again and again, a fifth of a 100,000-row import. Frozen, they are left out.
    gc.freeze()
    try:
        while start < len(rows):
            batch = rows[start:start + pace.batch_size]
            start += len(batch)
            written = _import_batch(registry, batch, mapping, result, pace)
            if progress is not None:
                progress(len(batch))
            if shared_attributes_written is not None:
                for device_id, entries in written:
                    shared_attributes_written(device_id, entries)
    finally:
        gc.unfreeze()
    return result


class _LockSharing:
    """How big the next batch is and how long to pause after one: flat out while the import
    is the only writer; once another connection has committed between two batches (SQLite's
    data_version tells), and until it has been quiet for QUIET_SECONDS, short batches and
    pauses that leave it the lock most of the time. A store whose device data does not wait
    for the import's lock (PostgreSQL) needs none of this."""

    def __init__(self, registry: Registry):
        self._registry = registry
        self._seen = 0 if registry.concurrent_device_data else registry.change_counter()
        self._others_wrote_at = -QUIET_SECONDS
        self.batch_size = BATCH_SIZE

    def written(self, rows: int, lock_seconds: float) -> None:
        """A batch of `rows` committed after holding the write lock `lock_seconds`."""
        if self._registry.concurrent_device_data:
            return
        seen, self._seen = self._seen, self._registry.change_counter()
        if seen != self._seen:
            self._others_wrote_at = time.monotonic()
        if time.monotonic() - self._others_wrote_at >= QUIET_SECONDS:
            self.batch_size = BATCH_SIZE
            return
        per_row = lock_seconds / max(rows, 1)
        self.batch_size = max(MIN_BATCH_SIZE, min(BATCH_SIZE, int(SHARED_LOCK_SECONDS / max(per_row, 1e-6))))
        time.sleep(lock_seconds * (1 - SHARED_LOCK_SHARE) / SHARED_LOCK_SHARE)


def _import_batch(registry, batch, mapping, result, pace: _LockSharing) -> list[tuple[str, tuple[KvEntry, ...]]]:
    """Import a batch in one transaction; returns the shared attributes written to existing devices."""
    errors, written = [], []
    lines, upserts = [], []
    for line, cells in batch:
        try:
            upserts.append(_row_upsert(cells, mapping))
            lines.append(line)
        except GatehouseError as e:
            errors.append((line, e))
    prepared = registry.prepare_upserts(upserts)
    started = time.monotonic()
    outcomes = registry.upsert_devices(prepared)
    pace.written(len(batch), time.monotonic() - started)
    for line, upsert, outcome in zip(lines, upserts, outcomes, strict=True):
        if isinstance(outcome, GatehouseError):
            errors.append((line, outcome))
        elif outcome.created:
            result.created += 1
        else:
            result.updated += 1
            shared = upsert.attributes[AttributeScope.SHARED]
            if shared and mapping.update:
                written.append((outcome.device_id, shared))
    result.errors += len(errors)
    result.errors_list += [f"Line {line}: {error}" for line, error in sorted(errors, key=lambda e: e[0])]
    return written


def _row_upsert(cells: list[str], mapping: BulkImportMapping) -> DeviceUpsert:
    """What a row asks for: the device to create or update, its data."""
    if len(cells) != len(mapping.columns):
        raise ValidationError(f"expected {len(mapping.columns)} columns, found {len(cells)}")
    fields: dict[ColumnType, str] = {}
    keyed: dict[ColumnType, dict[str, str]] = {}  # only the types that have values: most rows have none
    for column, cell in zip(mapping.columns, cells, strict=True):
        value = cell.strip()
        if column.type in _KEYED:
            if value:
                keyed.setdefault(column.type, {})[column.key] = value
        else:
            fields[column.type] = value
    additional_info = {}
    if fields.get(ColumnType.DESCRIPTION):
        additional_info["description"] = fields[ColumnType.DESCRIPTION]
    if ColumnType.IS_GATEWAY in fields:
        additional_info["gateway"] = fields[ColumnType.IS_GATEWAY].lower() == "true"
    return DeviceUpsert(
        fields.get(ColumnType.NAME, ""),
        profile=fields.get(ColumnType.TYPE) or None,
        label=fields.get(ColumnType.LABEL) or None,
        additional_info=additional_info,
        credentials=_row_credentials(fields),
        attributes={AttributeScope.SHARED: _typed(keyed.get(ColumnType.SHARED_ATTRIBUTE)),
                    AttributeScope.SERVER: _typed(keyed.get(ColumnType.SERVER_ATTRIBUTE))},
        telemetry=_typed(keyed.get(ColumnType.TIMESERIES)),
        write_data_of_existing=mapping.update,
    )


def _row_credentials(fields: dict[ColumnType, str]) -> NewCredentials | None:
    """ThingsBoard's precedence: X509, then any MQTT column, then ACCESS_TOKEN; None lets a new
    device get a generated token and an existing one keep its credentials."""
    if fields.get(ColumnType.X509):
        return X509Certificate.parse(fields[ColumnType.X509])
    client_id, user_name, password = (fields.get(t) or None for t in (
        ColumnType.MQTT_CLIENT_ID, ColumnType.MQTT_USER_NAME, ColumnType.MQTT_PASSWORD))
    if client_id or user_name or password:
        return MqttBasic(client_id, user_name, password)
    if fields.get(ColumnType.ACCESS_TOKEN):
        return AccessToken(fields[ColumnType.ACCESS_TOKEN])
    return None


def _typed(values: dict[str, str] | None):
    if not values:
        return ()
    # Cells are text; ThingsBoard's type cast makes "42" a LONG and "true" a BOOLEAN.
    entries = kv_entries({k: _cell_value(v) for k, v in values.items()})
    if isinstance(entries, PayloadError):
        raise ValidationError(entries.message)
    return entries


def _cell_value(cell: str):
    lowered = cell.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return cell
