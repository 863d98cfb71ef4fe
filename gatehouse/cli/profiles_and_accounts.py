"""The operator's commands of `gatehouse` for the box itself (init, profile, pki, app, admin): each
a thin client of the library API, `gatehouse.registry.Registry` (and gatehouse.pki); none
starts a process (those are in .serve).

Every command that prints data takes `--json` (ThingsBoard's field names); every refusal is one
line on stderr and a non-zero exit, with nothing changed.
"""
from __future__ import annotations

from pathlib import Path

import click

from .. import pki
from ..data_dir import DataDir
from ..models import DeviceProfile, ProvisionType
from ..mqtt_topic_settings import (
    DEFAULT_ATTRIBUTES_TOPIC,
    DEFAULT_TELEMETRY_TOPIC,
    MqttTopicSettings,
)
from ..registry import Registry
from .output import emit, json_option, open_registry

STRATEGIES = {
    "allow-create": ProvisionType.ALLOW_CREATE_NEW_DEVICES,
    "check-pre-provisioned": ProvisionType.CHECK_PRE_PROVISIONED_DEVICES,
    "x509-chain": ProvisionType.X509_CERTIFICATE_CHAIN,
    "disabled": ProvisionType.DISABLED,
}


@click.command()
@click.option("--hostname", "hostnames", multiple=True, help="Extra DNS name or IP for the server certificate.")
@click.pass_context
def init(ctx: click.Context, hostnames: tuple[str, ...]) -> None:
    """Create the database, server key and development CA + server certificate (idempotent)."""
    initialise(ctx.obj, hostnames)


def initialise(data_dir: Path, hostnames=()) -> None:
    Registry.initialise(data_dir, hostnames=hostnames).close()
    paths = DataDir.of(data_dir)
    click.echo(f"Gatehouse data in {paths.root}: database {paths.database_shown}, "
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
    if p.mqtt_topics is not None:
        t = p.mqtt_topics
        lines += [f"  MQTT telemetry topic:            {t.telemetry_topic}",
                  f"  MQTT attributes topic:           {t.attributes_topic}",
                  f"  MQTT attributes subscribe topic: {t.attributes_subscribe_topic}",
                  f"  acknowledges invalid payloads:   {'yes' if t.send_ack_on_validation_exception else 'no'}"]
    return "\n".join(lines)


@click.group()
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
    mqtt_topics = MqttTopicSettings(**given) if given else None
    created = open_registry(ctx).create_profile(
        name, STRATEGIES[strategy], key=key, secret=secret, ca_certificate_pem=ca_cert.read() if ca_cert else None,
        cn_regex=cn_regex, allow_create=allow_create, default=is_default, mqtt_topics=mqtt_topics)
    emit(as_json, created.to_json(), _profile_text(created))


@profile.command("list")
@json_option
@click.pass_context
def profile_list(ctx, as_json) -> None:
    """List device profiles."""
    profiles = open_registry(ctx).list_profiles()
    emit(as_json, [p.to_json() for p in profiles],
          "\n".join(f"{p.name}\t{p.provision_type.value}{chr(9) + 'default' if p.is_default else ''}"
                    for p in profiles))


@profile.command("show")
@click.argument("name")
@json_option
@click.pass_context
def profile_show(ctx, name, as_json) -> None:
    """Show a device profile, with its provision key and secret."""
    p = open_registry(ctx).get_profile(name)
    emit(as_json, p.to_json(), _profile_text(p))


@profile.command("delete")
@click.argument("name")
@click.pass_context
def profile_delete(ctx, name) -> None:
    """Delete a device profile that no device uses."""
    open_registry(ctx).delete_profile(name)
    click.echo(f"Deleted profile {name}")


# --- PKI, applications, administrators ---------------------------------------------

@click.group("pki")
def pki_group() -> None:
    """The development CA."""


@pki_group.command("issue")
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--days", type=click.IntRange(1), default=365, show_default=True)
@click.pass_context
def pki_issue(ctx, name, out_dir, days) -> None:
    """Issue a client certificate for an X.509 device: OUT/NAME.pem and OUT/NAME.key."""
    ca = pki.DevelopmentPki.in_directory(ctx.obj.pki)
    cert_path, key_path = pki.issue_device_certificate(ca, name, out_dir, days=days)
    click.echo(f"{cert_path}\n{key_path}")


@click.group()
def app() -> None:
    """Backend application accounts: MQTT access to gatehouse/devices/# (device data, shared
    attributes, RPC)."""


@app.command("create")
@click.argument("name")
@json_option
@click.pass_context
def app_create(ctx, name, as_json) -> None:
    """Create an application account and print its MQTT username and password (shown once)."""
    username, password = open_registry(ctx).create_application(name)
    emit(as_json, {"name": name, "username": username, "password": password},
          f"{name}\n  username: {username}\n  password: {password}")


@app.command("list")
@json_option
@click.pass_context
def app_list(ctx, as_json) -> None:
    """List application accounts."""
    names = open_registry(ctx).list_applications()
    emit(as_json, names, "\n".join(names))


@app.command("delete")
@click.argument("name")
@click.pass_context
def app_delete(ctx, name) -> None:
    """Delete an application account."""
    open_registry(ctx).delete_application(name)
    click.echo(f"Deleted application {name}")


@click.group()
def admin() -> None:
    """Administrator accounts (admin REST API and web UI)."""


@admin.command("add")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.pass_context
def admin_add(ctx, username, password) -> None:
    """Add an administrator."""
    open_registry(ctx).add_admin(username, password)
    click.echo(f"Added administrator {username}")


# What the root group (gatehouse.cli.main) adds to itself.
COMMANDS = (init, profile, pki_group, app, admin)
