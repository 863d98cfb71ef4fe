"""The process-launching commands of `gatehouse`: broker, sidecar, coap, and up, which supervises
all three. The only code in the `gatehouse` package that imports a component (broker_plugin,
sidecar, coap_bridge), lazily, when its command runs, so that the domain and the operator's
commands load without them.

Each command checks that the data dir opens before it starts anything, so that a broken data dir
is one clear error rather than a server that cannot log anyone in.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ValidationError
from ..login_limiter import DEFAULT_BLOCK_SECONDS, DEFAULT_MAX_FAILURES
from ..logs import LOG_LEVELS
from ..registry import Registry
from ..retention import AUDIT_RETENTION_DAYS, TELEMETRY_RETENTION_DAYS, RetentionPolicy
from ..runtime import ports
from .profiles_and_accounts import initialise
from .supervisor import Settings, components, first_steps, supervise


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


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the listeners bind to.")
@click.option("--mqtt-port", type=click.IntRange(0, 65535), default=ports.MQTT_PORT, show_default=True, help="0: any free port.")
@click.option("--mqtts-port", type=click.IntRange(0, 65535), default=ports.MQTTS_PORT, show_default=True, help="0: any free port.")
@_tls_options
@click.option("--max-failed-logins", type=click.IntRange(1), default=DEFAULT_MAX_FAILURES, show_default=True,
              help="Failed logins from one address before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=DEFAULT_BLOCK_SECONDS, show_default=True)
@click.option("--provision-close-seconds", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Provisioning connections are closed this long after the answer.")
@click.option("--connect-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Connections that send no CONNECT within this time are closed.")
@_metrics_port_option(ports.BROKER_METRICS_PORT)
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


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the HTTP server binds to.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=ports.HTTP_PORT, show_default=True, help="0: any free port.")
@click.option("--broker-host", default=ports.LOOPBACK, show_default=True, help="The Gatehouse broker to publish to.")
@click.option("--broker-port", type=click.IntRange(1, 65535), default=ports.MQTT_PORT, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=64, show_default=True,
              help="Server threads; every open long poll holds one.")
@click.option("--rpc-expiry-seconds", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="How long a server-side RPC waits for an HTTP or CoAP device to poll for it.")
@click.option("--ui-idle-minutes", type=click.IntRange(1), default=30, show_default=True,
              help="The web UI logs an administrator out after this long without a request.")
@click.option("--max-failed-logins", type=click.IntRange(1), default=DEFAULT_MAX_FAILURES, show_default=True,
              help="Device API requests with unknown tokens, and failed administrator logins (admin API and web "
                   "UI), each counted on its own, from one address before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=DEFAULT_BLOCK_SECONDS, show_default=True)
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


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the CoAP listeners bind to.")
@click.option("--coap-port", type=click.IntRange(0, 65535), default=ports.COAP_PORT, show_default=True, help="0: any free port.")
@click.option("--coaps-port", type=click.IntRange(0, 65535), default=ports.COAPS_PORT, show_default=True, help="0: any free port.")
@click.option("--sidecar-url", default=ports.SIDECAR_URL, show_default=True,
              help="The Gatehouse sidecar whose HTTP device API the bridge forwards to.")
@click.option("--sidecar-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="How long a device request waits for the sidecar's answer; then the device gets 5.00. "
                   "Observations and client-side RPC wait on their own, longer bounds.")
@_tls_options
@click.option("--max-failed-logins", type=click.IntRange(1), default=DEFAULT_MAX_FAILURES, show_default=True,
              help="Requests with unknown tokens from one address (CoAP or DTLS) before it is blocked.")
@click.option("--block-seconds", type=click.FloatRange(0), default=DEFAULT_BLOCK_SECONDS, show_default=True)
@_metrics_port_option(ports.COAP_METRICS_PORT)
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


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address every listener binds to.")
@click.option("--mqtt-port", type=click.IntRange(0, 65535), default=ports.MQTT_PORT, show_default=True)
@click.option("--mqtts-port", type=click.IntRange(0, 65535), default=ports.MQTTS_PORT, show_default=True)
@click.option("--http-port", type=click.IntRange(0, 65535), default=ports.HTTP_PORT, show_default=True)
@click.option("--coap-port", type=click.IntRange(0, 65535), default=ports.COAP_PORT, show_default=True)
@click.option("--coaps-port", type=click.IntRange(0, 65535), default=ports.COAPS_PORT, show_default=True)
@_tls_options
@_metrics_port_option(ports.BROKER_METRICS_PORT, "--broker-metrics-port", "The broker's Prometheus /metrics")
@_metrics_port_option(ports.COAP_METRICS_PORT, "--coap-metrics-port", "The CoAP bridge's Prometheus /metrics")
@click.option("--max-failed-logins", type=click.IntRange(1), default=DEFAULT_MAX_FAILURES, show_default=True,
              help="Failed logins from one address before it is blocked: MQTT logins, HTTP and CoAP requests with "
                   "unknown tokens, administrators' logins, each counted by its own component.")
@click.option("--block-seconds", type=click.FloatRange(0), default=DEFAULT_BLOCK_SECONDS, show_default=True)
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
    initialise(ctx.obj)
    settings = Settings(data_dir=ctx.obj.resolve(), host=host, mqtt_port=mqtt_port, mqtts_port=mqtts_port,
                        http_port=http_port, coap_port=coap_port, coaps_port=coaps_port,
                        tls_cert=tls_cert, tls_key=tls_key, broker_metrics_port=broker_metrics_port,
                        coap_metrics_port=coap_metrics_port, log_format=log_format, log_level=log_level,
                        max_failed_logins=max_failed_logins, block_seconds=block_seconds,
                        telemetry_retention_days=telemetry_retention_days, audit_retention_days=audit_retention_days,
                        telemetry_history=telemetry_history)
    with Registry.open(ctx.obj) as registry:
        has_admins = registry.has_admins()
    ctx.exit(supervise(components(settings), then=first_steps(settings, has_admins=has_admins),
                       restart_on_failure=restart == "on-failure"))


# What the root group (gatehouse.cli.main) adds to itself.
COMMANDS = (broker, sidecar, coap, up)
