"""The operator's commands for devices (device create/list/show/telemetry/delete/credentials/import)
and their telemetry history (telemetry prune): thin clients of gatehouse.registry.Registry,
gatehouse.bulk_import and gatehouse.retention.
"""
from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import click

from .. import retention
from ..bulk_import import BulkImportMapping, header_delimiter, import_rows, parse_rows, read_header
from ..clock import now_ms, timestamp_text, utc_text
from ..credentials import AccessToken, MqttBasic, NewCredentials, X509Certificate
from ..device_activity import ACTIVE, LAST_ACTIVITY_TIME
from ..errors import ValidationError
from ..models import AttributeScope, Device, DeviceCredentials
from ..registry import HISTORY_LIMIT
from ..retention import TELEMETRY_RETENTION_DAYS, Prunable
from .output import emit, json_option, open_registry


def _credentials_options(func):
    for option in reversed([
        click.option("--token", help="Access token (generated if no credentials are given)."),
        click.option("--client-id", help="MQTT basic: client id."),
        click.option("--username", help="MQTT basic: user name."),
        click.option("--password", help="MQTT basic: password."),
        click.option("--cert", type=click.File("r"), help="X.509: the device certificate (PEM)."),
    ]):
        func = option(func)
    return func


def _chosen_credentials(token, client_id, username, password, cert) -> NewCredentials | None:
    chosen = [kind for kind, given in (("--token", token), ("MQTT basic", client_id or username or password),
                                       ("--cert", cert)) if given]
    if len(chosen) > 1:
        raise ValidationError(f"choose one kind of credentials, not {' and '.join(chosen)}")
    if token:
        return AccessToken(token)
    if client_id or username or password:
        return MqttBasic(client_id, username, password)
    if cert:
        return X509Certificate.parse(cert.read())
    return None


def _device_text(d: Device, c: DeviceCredentials | None = None) -> str:
    lines = [d.name, f"  id:          {d.id}", f"  profile:     {d.profile_name}"]
    if d.label:
        lines.append(f"  label:       {d.label}")
    if d.is_gateway:
        lines.append("  gateway:     yes")
    if c is not None:
        lines.append(_credentials_text(c))
    return "\n".join(lines)


def _activity_text(activity: dict) -> str:
    """`active: yes, last activity 2026-11-29 19:40:01 UTC` (never: the device was not seen yet)."""
    if ACTIVE not in activity:
        return "  active:      never seen"
    last = utc_text(activity.get(LAST_ACTIVITY_TIME))
    when = "" if last is None else f", last activity {last}"
    return f"  active:      {'yes' if activity[ACTIVE] else 'no'}{when}"


# `device show`'s attribute scopes, in its JSON's names (the device API's "client" and "shared").
SHOWN_SCOPES = (("client", AttributeScope.CLIENT), ("shared", AttributeScope.SHARED), ("server", AttributeScope.SERVER))


def _value_text(value) -> str:
    """A value as JSON, so that the text "1" and the number 1 look apart."""
    return json.dumps(value, ensure_ascii=False)


def _attributes_text(attributes: dict[str, dict]) -> str:
    """Each scope's attributes, `key = value`; times (lastActivityTime, ...) also in UTC."""
    lines = []
    for scope, values in attributes.items():
        lines.append(f"  {scope} attributes:" + ("" if values else " none"))
        for key, value in values.items():
            when = timestamp_text(key, value)
            lines.append(f"    {key} = {_value_text(value)}" + (f" ({when})" if when else ""))
    return "\n".join(lines)


def _latest_telemetry_text(latest: dict) -> str:
    if not latest:
        return "  latest telemetry: none"
    return "\n".join(["  latest telemetry:", *(f"    {key} = {_value_text(point['value'])} at {_point_time(point['ts'])}"
                                               for key, point in latest.items())])


def _point_time(ms: int) -> str:
    """A telemetry point's time in UTC, to the millisecond (points may come many a second)."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _credentials_text(c: DeviceCredentials) -> str:
    lines = [f"  credentials: {c.credentials_type.value}"]
    if c.credentials_type.value == "ACCESS_TOKEN":
        lines.append(f"  token:       {c.credentials_id}")
    elif c.credentials_type.value == "MQTT_BASIC":
        value = json.loads(c.credentials_value)
        lines += [f"  client id:   {value['clientId'] or ''}", f"  user name:   {value['userName'] or ''}",
                  f"  password:    {value['password'] or ''}"]
    else:
        lines.append(f"  thumbprint:  {c.credentials_id}")
    return "\n".join(lines)


def _device_json(d: Device, c: DeviceCredentials) -> dict:
    return {"device": d.to_json(), "credentials": c.to_json()}


@click.group()
def device() -> None:
    """Devices and their credentials."""


@device.command("create")
@click.argument("name")
@click.option("--profile", help="Device profile (default profile if omitted).")
@click.option("--label")
@click.option("--gateway", is_flag=True, help="Mark the device as a gateway.")
@_credentials_options
@json_option
@click.pass_context
def device_create(ctx, name, profile, label, gateway, token, client_id, username, password, cert, as_json) -> None:
    """Create a device with the given credentials (a generated access token by default)."""
    registry = open_registry(ctx)
    created = registry.create_device(name, profile=profile, label=label,
                                     additional_info={"gateway": True} if gateway else None,
                                     credentials=_chosen_credentials(token, client_id, username, password, cert))
    credentials = registry.get_credentials(created.id)
    emit(as_json, _device_json(created, credentials), _device_text(created, credentials))


@device.command("list")
@click.option("--search", help="Only devices whose name contains this text.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@json_option
@click.pass_context
def device_list(ctx, search, limit, offset, as_json) -> None:
    """List devices by name."""
    devices = open_registry(ctx).list_devices(offset=offset, limit=limit, name_contains=search)
    emit(as_json, [d.to_json() for d in devices], "\n".join(f"{d.name}\t{d.profile_name}" for d in devices))


@device.command("show")
@click.argument("name")
@json_option
@click.pass_context
def device_show(ctx, name, as_json) -> None:
    """Show a device, its credentials, its attributes of every scope (activity and provisioning
    state among the server ones) and its latest telemetry."""
    registry = open_registry(ctx)
    found = registry.get_device(name)
    credentials = registry.get_credentials(found.id)
    activity = registry.device_activity(found.id)
    attributes = {label: registry.get_attributes(found.id, scope) for label, scope in SHOWN_SCOPES}
    latest = registry.latest_telemetry(found.id)
    emit(as_json, {**_device_json(found, credentials), "activity": activity, "attributes": attributes,
                    "latestTelemetry": latest},
          "\n".join([_device_text(found, credentials), _activity_text(activity), _attributes_text(attributes),
                     _latest_telemetry_text(latest)]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class When(click.ParamType):
    """A time: ISO 8601 (2026-11-29, 2026-11-29T19:40:01Z, ...; UTC unless it says otherwise)
    or ms since the epoch; as ms since the epoch."""

    name = "WHEN"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:  # a refusal like the others: one line, not click's usage text
            raise ValidationError(f"{param.opts[0] if param else 'WHEN'}: {value!r} is neither an ISO 8601 time "
                                  "(2026-11-29T19:40:01Z) nor ms since the epoch") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return (parsed - _EPOCH) // timedelta(milliseconds=1)  # exact: no float on the way


def _history_text(keys: tuple[str, ...], history: dict) -> str:
    lines = []
    for key in dict.fromkeys(keys):
        points = history.get(key, [])
        lines.append(key + ("" if points else ": no points"))
        lines += [f"  {_point_time(point['ts'])}  {_value_text(point['value'])}" for point in points]
    return "\n".join(lines)


@device.command("telemetry")
@click.argument("name")
@click.option("--key", "keys", multiple=True, required=True, help="A telemetry key (repeat for more).")
@click.option("--since", type=When(), help="From this time on (included): ISO 8601, UTC unless it names an offset "
                                            "(2026-11-29, 2026-11-29T19:40:01Z), or ms since the epoch.")
@click.option("--until", type=When(), help="Up to this time (excluded), as --since.")
@click.option("--limit", type=click.IntRange(1), default=HISTORY_LIMIT, show_default=True,
              help="At most this many points per key: the newest ones.")
@json_option
@click.pass_context
def device_telemetry(ctx, name, keys, since, until, limit, as_json) -> None:
    """Print a device's telemetry history, newest first, per key (times in UTC).

    The JSON is the admin API's time series answer with typed values:
    {"key": [{"ts", "value"}]}, keys without points left out."""
    registry = open_registry(ctx)
    found = registry.get_device(name)
    history = registry.telemetry_history(found.id, keys, start_ts=since, end_ts=until, limit=limit)
    emit(as_json, history, _history_text(keys, history))


@device.command("delete")
@click.argument("name")
@click.pass_context
def device_delete(ctx, name) -> None:
    """Delete a device with its credentials and data."""
    open_registry(ctx).delete_device(name)
    click.echo(f"Deleted device {name}")


@device.command("credentials")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Replace the credentials with a new generated access token.")
@_credentials_options
@json_option
@click.pass_context
def device_credentials(ctx, name, rotate, token, client_id, username, password, cert, as_json) -> None:
    """Show a device's credentials, or replace them."""
    registry = open_registry(ctx)
    new = _chosen_credentials(token, client_id, username, password, cert)
    if rotate and new is not None:
        raise ValidationError("--rotate generates a token; do not combine it with other credentials")
    if rotate or new is not None:
        credentials = registry.set_credentials(name, new)
    else:
        credentials = registry.get_credentials(name)
    emit(as_json, credentials.to_json(), _credentials_text(credentials).lstrip())


@device.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--delimiter", help="The CSV delimiter; default: found from the header (',', ';', tab or '|').")
@click.option("--update/--no-update", default=True, show_default=True,
              help="Write attribute and telemetry columns to devices that already exist.")
@json_option
@click.pass_context
def device_import(ctx, csv_file, delimiter, update, as_json) -> None:
    """Create or update devices from a CSV file in ThingsBoard's bulk-provisioning format.

    The header names each column's type: NAME, TYPE (profile), LABEL, DESCRIPTION, IS_GATEWAY,
    ACCESS_TOKEN, X509, MQTT_CLIENT_ID, MQTT_USER_NAME, MQTT_PASSWORD, and SHARED_ATTRIBUTE:key,
    SERVER_ATTRIBUTE:key, TIMESERIES:key. Bad rows are reported by line and change nothing;
    the exit status is 1 if any row failed.
    """
    registry = open_registry(ctx)
    text = csv_file.read()
    delimiter = delimiter or header_delimiter(text)
    mapping = BulkImportMapping.from_header(read_header(text, delimiter), delimiter=delimiter, update=update)
    rows = parse_rows(text, mapping)
    with click.progressbar(length=len(rows), label="Importing", file=sys.stderr) as bar:
        result = import_rows(registry, rows, mapping, progress=bar.update)
    emit(as_json, result.to_json(),
          f"created {result.created}, updated {result.updated}, errors {result.errors}")
    for error in result.errors_list:
        click.echo(error, err=True)
    if result.errors:
        ctx.exit(1)


# --- telemetry ----------------------------------------------------------------------------

@click.group()
def telemetry() -> None:
    """Devices' telemetry history."""


@telemetry.command("prune")
@click.option("--older-than-days", type=click.FloatRange(0, min_open=True), default=TELEMETRY_RETENTION_DAYS,
              show_default=True, help="Delete history points older than this (latest values stay).")
@json_option
@click.pass_context
def telemetry_prune(ctx, older_than_days, as_json) -> None:
    """Delete old telemetry history now, in small batches that leave room for the devices'
    writes (the broker does the same on its own schedule: --telemetry-retention-days)."""
    registry = open_registry(ctx)
    before = retention.cutoff(now_ms(), older_than_days)
    with click.progressbar(length=registry.count_prunable(Prunable.TELEMETRY, before), label="Pruning",
                           file=sys.stderr) as bar:
        removed = retention.prune(registry, Prunable.TELEMETRY, before, progress=bar.update)
    emit(as_json, {"removed": removed, "olderThanDays": older_than_days, "before": before},
          f"removed {removed} telemetry points recorded before {utc_text(before)}")


# What the root group (gatehouse.cli.main) adds to itself.
COMMANDS = (device, telemetry)
