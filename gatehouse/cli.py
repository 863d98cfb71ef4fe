"""The `gatehouse` command: a thin client of `gatehouse.registry.Registry`.

Every command that prints data takes `--json` (ThingsBoard's field names); every refusal is one
line on stderr and a non-zero exit, with nothing changed.
"""
from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from . import certificates, pki, retention
from .bulk_import import BulkImportMapping, header_delimiter, import_rows, parse_rows, read_header
from .clock import now_ms, timestamp_text, utc_text
from .credentials import AccessToken, MqttBasic, NewCredentials, X509Certificate
from .data_dir import DEFAULT_DATA_DIR, DataDir
from .device_activity import ACTIVE, LAST_ACTIVITY_TIME
from .errors import GatehouseError, ValidationError
from .logs import LOG_LEVELS
from .models import AttributeScope, Device, DeviceCredentials, DeviceProfile, ProvisionType
from .mqtt_transport import (
    DEFAULT_ATTRIBUTES_TOPIC,
    DEFAULT_TELEMETRY_TOPIC,
    MqttTransport,
)
from .registry import HISTORY_LIMIT, Registry
from .retention import AUDIT_RETENTION_DAYS, TELEMETRY_RETENTION_DAYS, Prunable, RetentionPolicy
from .server_key import ServerKeyError
from .supervisor import Settings, components, first_steps, supervise

STRATEGIES = {
    "allow-create": ProvisionType.ALLOW_CREATE_NEW_DEVICES,
    "check-pre-provisioned": ProvisionType.CHECK_PRE_PROVISIONED_DEVICES,
    "x509-chain": ProvisionType.X509_CERTIFICATE_CHAIN,
    "disabled": ProvisionType.DISABLED,
}
_EXPECTED_ERRORS = (GatehouseError, pki.PkiError, certificates.CertificateError, ServerKeyError, OSError)


class GatehouseGroup(click.Group):
    """Turns the library's refusals into one-line errors instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _EXPECTED_ERRORS as e:
            raise click.ClickException(str(e)) from None


def _emit(as_json: bool, data, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


def _registry(ctx: click.Context) -> Registry:
    registry = Registry.open(ctx.obj)
    ctx.call_on_close(registry.close)
    return registry


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (ThingsBoard's field names).")


@click.group(cls=GatehouseGroup)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GATEHOUSE_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Where the database, keys and certificates live.")
@click.version_option(package_name="gatehouse")
@click.pass_context
def main(ctx: click.Context, data_dir: Path) -> None:
    """Gatehouse: ThingsBoard-compatible device credentials and provisioning for MQTT fleets."""
    ctx.obj = data_dir


@main.command()
@click.option("--hostname", "hostnames", multiple=True, help="Extra DNS name or IP for the server certificate.")
@click.pass_context
def init(ctx: click.Context, hostnames: tuple[str, ...]) -> None:
    """Create the database, server key and development CA + server certificate (idempotent)."""
    _initialise(ctx.obj, hostnames)


def _initialise(data_dir: Path, hostnames=()) -> None:
    Registry.initialise(data_dir, hostnames=hostnames).close()
    paths = DataDir(data_dir)
    click.echo(f"Gatehouse data in {paths.root}: database {paths.database.name}, "
               f"CA certificate for clients {paths.pki / 'ca.pem'}")


# --- profiles ------------------------------------------------------------------------------

def _profile_text(p: DeviceProfile) -> str:
    lines = [f"{p.name}{' (default)' if p.is_default else ''}", f"  id:        {p.id}",
             f"  strategy:  {p.provision_type.value}"]
    if p.provision_type in (ProvisionType.ALLOW_CREATE_NEW_DEVICES, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES):
        lines += [f"  key:       {p.provision_device_key}", f"  secret:    {p.provision_device_secret}"]
    elif p.provision_type is ProvisionType.X509_CERTIFICATE_CHAIN:
        lines += [f"  key:       {p.provision_device_key} (SHA3 of the CA certificate)",
                  f"  CN regex:  {p.certificate_regex}",
                  f"  creates devices: {'yes' if p.allow_create_by_x509 else 'no'}"]
    if p.mqtt_transport is not None:
        t = p.mqtt_transport
        lines += [f"  MQTT telemetry topic:            {t.telemetry_topic}",
                  f"  MQTT attributes topic:           {t.attributes_topic}",
                  f"  MQTT attributes subscribe topic: {t.attributes_subscribe_topic}",
                  f"  acknowledges invalid payloads:   {'yes' if t.send_ack_on_validation_exception else 'no'}"]
    return "\n".join(lines)


@main.group()
def profile() -> None:
    """Device profiles and their provisioning strategies."""


@profile.command("create")
@click.argument("name")
@click.option("--strategy", type=click.Choice(list(STRATEGIES)), default="disabled", show_default=True)
@click.option("--key", help="Provision device key (generated if omitted).")
@click.option("--secret", help="Provision device secret (generated if omitted).")
@click.option("--ca-cert", type=click.File("r"), help="x509-chain: the CA certificate (PEM) that issues device certificates.")
@click.option("--cn-regex", default="(.*)", show_default=True, help="x509-chain: group 1 of this regex on the CN is the device name.")
@click.option("--allow-create/--no-allow-create", default=True, show_default=True,
              help="x509-chain: create devices that do not exist yet.")
@click.option("--default", "is_default", is_flag=True, help="Make this the default profile.")
@click.option("--mqtt-telemetry-topic", metavar="FILTER",
              help=f"MQTT transport: the topic devices publish telemetry on [{DEFAULT_TELEMETRY_TOPIC}]; + and # allowed.")
@click.option("--mqtt-attributes-topic", metavar="FILTER",
              help=f"MQTT transport: the topic devices publish attributes on [{DEFAULT_ATTRIBUTES_TOPIC}].")
@click.option("--mqtt-attributes-subscribe-topic", metavar="FILTER",
              help=f"MQTT transport: the subscription for shared attribute updates [{DEFAULT_ATTRIBUTES_TOPIC}].")
@click.option("--ack-invalid-payloads", is_flag=True,
              help="MQTT transport: acknowledge an invalid QoS 1 payload instead of closing the connection.")
@json_option
@click.pass_context
def profile_create(ctx, name, strategy, key, secret, ca_cert, cn_regex, allow_create, is_default, mqtt_telemetry_topic,
                   mqtt_attributes_topic, mqtt_attributes_subscribe_topic, ack_invalid_payloads, as_json) -> None:
    """Create a device profile. Any --mqtt-* option or --ack-invalid-payloads gives it ThingsBoard's
    MQTT transport type; the topics not given keep their defaults."""
    given = {name: value for name, value in (
        ("telemetry_topic", mqtt_telemetry_topic), ("attributes_topic", mqtt_attributes_topic),
        ("attributes_subscribe_topic", mqtt_attributes_subscribe_topic),
        ("send_ack_on_validation_exception", ack_invalid_payloads)) if value}
    mqtt_transport = MqttTransport(**given) if given else None
    created = _registry(ctx).create_profile(
        name, STRATEGIES[strategy], key=key, secret=secret, ca_certificate_pem=ca_cert.read() if ca_cert else None,
        cn_regex=cn_regex, allow_create=allow_create, default=is_default, mqtt_transport=mqtt_transport)
    _emit(as_json, created.to_json(), _profile_text(created))


@profile.command("list")
@json_option
@click.pass_context
def profile_list(ctx, as_json) -> None:
    """List device profiles."""
    profiles = _registry(ctx).list_profiles()
    _emit(as_json, [p.to_json() for p in profiles],
          "\n".join(f"{p.name}\t{p.provision_type.value}{chr(9) + 'default' if p.is_default else ''}"
                    for p in profiles))


@profile.command("show")
@click.argument("name")
@json_option
@click.pass_context
def profile_show(ctx, name, as_json) -> None:
    """Show a device profile, with its provision key and secret."""
    p = _registry(ctx).get_profile(name)
    _emit(as_json, p.to_json(), _profile_text(p))


@profile.command("delete")
@click.argument("name")
@click.pass_context
def profile_delete(ctx, name) -> None:
    """Delete a device profile that no device uses."""
    _registry(ctx).delete_profile(name)
    click.echo(f"Deleted profile {name}")


# --- devices -------------------------------------------------------------------------------

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


@main.group()
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
    registry = _registry(ctx)
    created = registry.create_device(name, profile=profile, label=label,
                                     additional_info={"gateway": True} if gateway else None,
                                     credentials=_chosen_credentials(token, client_id, username, password, cert))
    credentials = registry.get_credentials(created.id)
    _emit(as_json, _device_json(created, credentials), _device_text(created, credentials))


@device.command("list")
@click.option("--search", help="Only devices whose name contains this text.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@json_option
@click.pass_context
def device_list(ctx, search, limit, offset, as_json) -> None:
    """List devices by name."""
    devices = _registry(ctx).list_devices(offset=offset, limit=limit, name_contains=search)
    _emit(as_json, [d.to_json() for d in devices], "\n".join(f"{d.name}\t{d.profile_name}" for d in devices))


@device.command("show")
@click.argument("name")
@json_option
@click.pass_context
def device_show(ctx, name, as_json) -> None:
    """Show a device, its credentials, its attributes of every scope (activity and provisioning
    state among the server ones) and its latest telemetry."""
    registry = _registry(ctx)
    found = registry.get_device(name)
    credentials = registry.get_credentials(found.id)
    activity = registry.device_activity(found.id)
    attributes = {label: registry.get_attributes(found.id, scope) for label, scope in SHOWN_SCOPES}
    latest = registry.latest_telemetry(found.id)
    _emit(as_json, {**_device_json(found, credentials), "activity": activity, "attributes": attributes,
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
    registry = _registry(ctx)
    found = registry.get_device(name)
    history = registry.telemetry_history(found.id, keys, start_ts=since, end_ts=until, limit=limit)
    _emit(as_json, history, _history_text(keys, history))


@device.command("delete")
@click.argument("name")
@click.pass_context
def device_delete(ctx, name) -> None:
    """Delete a device with its credentials and data."""
    _registry(ctx).delete_device(name)
    click.echo(f"Deleted device {name}")


@device.command("credentials")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Replace the credentials with a new generated access token.")
@_credentials_options
@json_option
@click.pass_context
def device_credentials(ctx, name, rotate, token, client_id, username, password, cert, as_json) -> None:
    """Show a device's credentials, or replace them."""
    registry = _registry(ctx)
    new = _chosen_credentials(token, client_id, username, password, cert)
    if rotate and new is not None:
        raise ValidationError("--rotate generates a token; do not combine it with other credentials")
    if rotate or new is not None:
        credentials = registry.set_credentials(name, new)
    else:
        credentials = registry.get_credentials(name)
    _emit(as_json, credentials.to_json(), _credentials_text(credentials).lstrip())


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
    registry = _registry(ctx)
    text = csv_file.read()
    delimiter = delimiter or header_delimiter(text)
    mapping = BulkImportMapping.from_header(read_header(text, delimiter), delimiter=delimiter, update=update)
    rows = parse_rows(text, mapping)
    with click.progressbar(length=len(rows), label="Importing", file=sys.stderr) as bar:
        result = import_rows(registry, rows, mapping, progress=bar.update)
    _emit(as_json, result.to_json(),
          f"created {result.created}, updated {result.updated}, errors {result.errors}")
    for error in result.errors_list:
        click.echo(error, err=True)
    if result.errors:
        ctx.exit(1)


# --- telemetry ----------------------------------------------------------------------------

@main.group()
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
    registry = _registry(ctx)
    before = retention.cutoff(now_ms(), older_than_days)
    with click.progressbar(length=registry.count_prunable(Prunable.TELEMETRY, before), label="Pruning",
                           file=sys.stderr) as bar:
        removed = retention.prune(registry, Prunable.TELEMETRY, before, progress=bar.update)
    _emit(as_json, {"removed": removed, "olderThanDays": older_than_days, "before": before},
          f"removed {removed} telemetry points recorded before {utc_text(before)}")


# --- PKI, admin users, running -----------------------------------------------------------

@main.group("pki")
def pki_group() -> None:
    """The development CA."""


@pki_group.command("issue")
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--days", type=click.IntRange(1), default=365, show_default=True)
@click.pass_context
def pki_issue(ctx, name, out_dir, days) -> None:
    """Issue a client certificate for an X.509 device: OUT/NAME.pem and OUT/NAME.key."""
    ca = pki.DevelopmentPki.in_directory(DataDir(ctx.obj).pki)
    cert_path, key_path = pki.issue_device_certificate(ca, name, out_dir, days=days)
    click.echo(f"{cert_path}\n{key_path}")


@main.group()
def app() -> None:
    """Backend application accounts: MQTT access to gatehouse/devices/# (device data, shared
    attributes, RPC)."""


@app.command("create")
@click.argument("name")
@json_option
@click.pass_context
def app_create(ctx, name, as_json) -> None:
    """Create an application account and print its MQTT username and password (shown once)."""
    username, password = _registry(ctx).create_application(name)
    _emit(as_json, {"name": name, "username": username, "password": password},
          f"{name}\n  username: {username}\n  password: {password}")


@app.command("list")
@json_option
@click.pass_context
def app_list(ctx, as_json) -> None:
    """List application accounts."""
    names = _registry(ctx).list_applications()
    _emit(as_json, names, "\n".join(names))


@app.command("delete")
@click.argument("name")
@click.pass_context
def app_delete(ctx, name) -> None:
    """Delete an application account."""
    _registry(ctx).delete_application(name)
    click.echo(f"Deleted application {name}")


@main.group()
def admin() -> None:
    """Administrator accounts (admin REST API and web UI)."""


@admin.command("add")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.pass_context
def admin_add(ctx, username, password) -> None:
    """Add an administrator."""
    _registry(ctx).add_admin(username, password)
    click.echo(f"Added administrator {username}")


def _retention_options(func):
    func = click.option("--audit-retention-days", type=click.FloatRange(0), default=AUDIT_RETENTION_DAYS,
                        show_default=True, help="Provisioning audit events older than this are deleted; 0: kept.")(func)
    return click.option("--telemetry-retention-days", type=click.FloatRange(0), default=TELEMETRY_RETENTION_DAYS,
                        show_default=True,
                        help="Telemetry history older than this is deleted (latest values stay); 0: kept.")(func)


telemetry_history_option = click.option(
    "--telemetry-history/--no-telemetry-history", default=True, show_default=True,
    help="Store every telemetry point, or only each key's latest value (for applications that keep the "
         "history themselves from the gatehouse/devices/... feed).")


def log_format_option(func):
    """--log-format and --log-level, for every long-running command."""
    func = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO",
                        show_default=True, help="The least severe log records written; where each component listens is "
                             "printed on stdout at every level.")(func)
    return click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                        help="Logs on stderr: readable text, or one JSON object per line.")(func)


def _metrics_port_option(default: int, flag: str = "--metrics-port", what: str = "Prometheus /metrics"):
    return click.option(flag, type=click.IntRange(0, 65535), default=default, show_default=True,
                        help=f"{what} on --host (HTTP, unauthenticated); 0: any free port.")


def _tls_pair(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    # --tls-key is processed after --tls-cert; one without the other is a mistake.
    value = value.resolve() if value else None
    if param.name == "tls_key" and bool(value) != bool(ctx.params.get("tls_cert")):
        raise ValidationError("--tls-cert and --tls-key go together")
    return value


def _tls_options(func):
    func = click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        callback=_tls_pair, help="The private key of --tls-cert.")(func)
    return click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        callback=_tls_pair, is_eager=True,
                        help="Server certificate (PEM) for the TLS listeners; default: the data dir's "
                             "development certificate.")(func)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the listeners bind to.")
@click.option("--mqtt-port", type=click.IntRange(0, 65535), default=1883, show_default=True, help="0: any free port.")
@click.option("--mqtts-port", type=click.IntRange(0, 65535), default=8883, show_default=True, help="0: any free port.")
@_tls_options
@click.option("--max-failed-logins", type=click.IntRange(1), default=10, show_default=True,
              help="Failed logins from one address before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=60.0, show_default=True)
@click.option("--provision-close-seconds", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Provisioning connections are closed this long after the answer.")
@click.option("--connect-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Connections that send no CONNECT within this time are closed.")
@_metrics_port_option(9883)
@_retention_options
@click.option("--retention-interval-seconds", type=click.FloatRange(0.1), default=3600.0, show_default=True,
              help="How often retention runs (in one broker of those sharing the database).")
@telemetry_history_option
@log_format_option
@click.pass_context
def broker(ctx, host, mqtt_port, mqtts_port, tls_cert, tls_key, max_failed_logins, block_seconds,
           provision_close_seconds, connect_timeout, metrics_port, telemetry_retention_days, audit_retention_days,
           retention_interval_seconds, telemetry_history, log_format, log_level) -> None:
    """Run the MQTT broker (plain and TLS listeners) until Ctrl-C or SIGTERM."""
    Registry.open(ctx.obj).close()  # a clear error now rather than a broker that cannot log anyone in
    from broker_plugin.server import (  # components load lazily: the domain imports none
        BrokerSettings,
        run,
    )

    ctx.exit(run(BrokerSettings(
        data_dir=ctx.obj.resolve(), host=host, mqtt_port=mqtt_port, mqtts_port=mqtts_port, tls_cert=tls_cert,
        tls_key=tls_key, max_failed_logins=max_failed_logins, block_seconds=block_seconds,
        provision_close_seconds=provision_close_seconds, connect_timeout=connect_timeout, metrics_port=metrics_port,
        log_format=log_format, log_level=log_level,
        retention=RetentionPolicy(telemetry_retention_days, audit_retention_days),
        retention_interval_seconds=retention_interval_seconds, telemetry_history=telemetry_history)))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the HTTP server binds to.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@click.option("--broker-host", default="127.0.0.1", show_default=True, help="The Gatehouse broker to publish to.")
@click.option("--broker-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=64, show_default=True,
              help="Server threads; every open long poll holds one.")
@click.option("--rpc-expiry-seconds", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="How long a server-side RPC waits for an HTTP or CoAP device to poll for it.")
@click.option("--ui-idle-minutes", type=click.IntRange(1), default=30, show_default=True,
              help="The web UI logs an administrator out after this long without a request.")
@click.option("--max-failed-logins", type=click.IntRange(1), default=10, show_default=True,
              help="Device API requests with unknown tokens, and failed administrator logins (admin API and web "
                   "UI), each counted on its own, from one address before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=60.0, show_default=True)
@click.option("--trusted-proxy", metavar="ADDRESS",
              help="A reverse proxy's address: its X-Forwarded-For then names the client (login limits, "
                   "audit). Without it, the header is ignored.")
@telemetry_history_option
@log_format_option
@click.pass_context
def sidecar(ctx, host, http_port, broker_host, broker_port, threads, rpc_expiry_seconds, ui_idle_minutes,
            max_failed_logins, block_seconds, trusted_proxy, telemetry_history, log_format, log_level) -> None:
    """Run the HTTP device API, the admin REST API and the web UI (and Prometheus /metrics) until Ctrl-C or
    SIGTERM."""
    Registry.open(ctx.obj).close()
    from sidecar.context import (
        SidecarSettings,  # components load lazily: the domain imports none
    )
    from sidecar.server import run

    ctx.exit(run(SidecarSettings(data_dir=ctx.obj.resolve(), host=host, http_port=http_port, broker_host=broker_host,
                                 broker_port=broker_port, threads=threads, rpc_expiry_seconds=rpc_expiry_seconds,
                                 ui_session_idle_seconds=ui_idle_minutes * 60, max_failed_logins=max_failed_logins,
                                 block_seconds=block_seconds, trusted_proxy=trusted_proxy, log_format=log_format,
                                 log_level=log_level,
                                 telemetry_history=telemetry_history)))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the CoAP listeners bind to.")
@click.option("--coap-port", type=click.IntRange(0, 65535), default=5683, show_default=True, help="0: any free port.")
@click.option("--coaps-port", type=click.IntRange(0, 65535), default=5684, show_default=True, help="0: any free port.")
@click.option("--sidecar-url", default="http://127.0.0.1:8080", show_default=True,
              help="The Gatehouse sidecar whose HTTP device API the bridge forwards to.")
@click.option("--sidecar-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="How long a device request waits for the sidecar's answer; then the device gets 5.00. "
                   "Observations and client-side RPC wait on their own, longer bounds.")
@_tls_options
@click.option("--max-failed-logins", type=click.IntRange(1), default=10, show_default=True,
              help="Requests with unknown tokens from one address (CoAP or DTLS) before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=60.0, show_default=True)
@_metrics_port_option(9884)
@log_format_option
@click.pass_context
def coap(ctx, host, coap_port, coaps_port, sidecar_url, sidecar_timeout, tls_cert, tls_key, max_failed_logins,
         block_seconds, metrics_port, log_format, log_level) -> None:
    """Run the CoAP bridge (ThingsBoard's CoAP device API, plain and over DTLS) until Ctrl-C or SIGTERM."""
    Registry.open(ctx.obj).close()
    from coap_bridge.server import (  # components load lazily: the domain imports none
        CoapSettings,
        run,
    )

    ctx.exit(run(CoapSettings(data_dir=ctx.obj.resolve(), host=host, coap_port=coap_port, coaps_port=coaps_port,
                              sidecar_url=sidecar_url, sidecar_timeout=sidecar_timeout, tls_cert=tls_cert,
                              tls_key=tls_key, max_failed_logins=max_failed_logins, block_seconds=block_seconds,
                              metrics_port=metrics_port, log_format=log_format, log_level=log_level)))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address every listener binds to.")
@click.option("--mqtt-port", type=click.IntRange(0, 65535), default=1883, show_default=True)
@click.option("--mqtts-port", type=click.IntRange(0, 65535), default=8883, show_default=True)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--coap-port", type=click.IntRange(0, 65535), default=5683, show_default=True)
@click.option("--coaps-port", type=click.IntRange(0, 65535), default=5684, show_default=True)
@_tls_options
@_metrics_port_option(9883, "--broker-metrics-port", "The broker's Prometheus /metrics")
@_metrics_port_option(9884, "--coap-metrics-port", "The CoAP bridge's Prometheus /metrics")
@click.option("--max-failed-logins", type=click.IntRange(1), default=10, show_default=True,
              help="Failed logins from one address before it is blocked: MQTT logins, HTTP and CoAP requests with "
                   "unknown tokens, administrators' logins, each counted by its own component.")
@click.option("--block-seconds", type=click.FloatRange(0), default=60.0, show_default=True)
@_retention_options
@telemetry_history_option
@log_format_option
@click.option("--restart", type=click.Choice(["no", "on-failure"]), default="no", show_default=True,
              help="on-failure: a component that stops is started again (after 1 s, doubling up to 30 s while "
                   "it keeps stopping) and the others keep running; no: everything stops with it.")
@click.pass_context
def up(ctx, host, mqtt_port, mqtts_port, http_port, coap_port, coaps_port, tls_cert, tls_key, broker_metrics_port,
       coap_metrics_port, max_failed_logins, block_seconds, telemetry_retention_days, audit_retention_days,
       telemetry_history, log_format, log_level, restart) -> None:
    """Initialise if needed, then run and supervise every component until Ctrl-C or SIGTERM."""
    _initialise(ctx.obj)
    settings = Settings(data_dir=ctx.obj.resolve(), host=host, mqtt_port=mqtt_port, mqtts_port=mqtts_port,
                        http_port=http_port, coap_port=coap_port, coaps_port=coaps_port,
                        tls_cert=tls_cert, tls_key=tls_key, broker_metrics_port=broker_metrics_port,
                        coap_metrics_port=coap_metrics_port, log_format=log_format, log_level=log_level,
                        max_failed_logins=max_failed_logins, block_seconds=block_seconds,
                        telemetry_retention_days=telemetry_retention_days, audit_retention_days=audit_retention_days,
                        telemetry_history=telemetry_history)
    parts = components(settings)
    if not parts:
        click.echo("No network components are installed in this build; nothing to run.")
        return
    with Registry.open(ctx.obj) as registry:
        has_admins = registry.has_admins()
    ctx.exit(supervise(parts, then=first_steps(settings, has_admins=has_admins),
                       restart_on_failure=restart == "on-failure"))
