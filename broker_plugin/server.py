"""`gatehouse broker`: the hardened amqtt broker with the Gatehouse plugin, on a plain and a TLS
listener, stopped cleanly by SIGINT or SIGTERM (amqtt's own command skips shutdown on SIGTERM
and idles on a busy port)."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from amqtt.errors import BrokerError

from gatehouse.data_dir import DataDir
from gatehouse.login_limiter import DEFAULT_BLOCK_SECONDS, DEFAULT_MAX_FAILURES
from gatehouse.logs import RateLimit, announce, configure_logging
from gatehouse.retention import RetentionPolicy
from gatehouse.runtime import ports
from gatehouse.runtime.metrics_server import serve_metrics
from gatehouse.runtime.readiness import notify_ready

from .hardened_broker import HardenedBroker
from .plugin import GatehousePlugin

log = logging.getLogger(__name__)
PLUGIN_PATH = f"{GatehousePlugin.__module__}.{GatehousePlugin.__name__}"


@dataclass(frozen=True)
class BrokerSettings:
    data_dir: DataDir | Path
    host: str = "0.0.0.0"
    mqtt_port: int = ports.MQTT_PORT
    mqtts_port: int = ports.MQTTS_PORT
    tls_cert: Path | None = None  # default: the development server certificate in the data dir
    tls_key: Path | None = None
    connect_timeout: float = 10.0
    max_failed_logins: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    provision_close_seconds: float = 60.0
    metrics_port: int | None = ports.BROKER_METRICS_PORT  # Prometheus /metrics; 0: any free port, None: not served
    log_format: str = "text"
    log_level: str = "INFO"
    retention: RetentionPolicy = RetentionPolicy()
    retention_interval_seconds: float = 3600.0
    telemetry_history: bool = True


def broker_config(settings: BrokerSettings) -> dict:
    data_dir = DataDir.of(settings.data_dir)
    pki = data_dir.pki
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{settings.host}:{settings.mqtt_port}"},
            "tls": {"type": "tcp", "bind": f"{settings.host}:{settings.mqtts_port}", "ssl": True,
                    "certfile": str(settings.tls_cert or pki / "server.pem"),
                    "keyfile": str(settings.tls_key or pki / "server.key"),
                    "cafile": str(pki / "ca.pem")},
        },
        "plugins": {PLUGIN_PATH: {
            "data_dir": str(data_dir.root), "database": data_dir.database_url,
            "server_key_file": str(data_dir.server_key_file) if data_dir.server_key_file else None,
            "max_failed_logins": settings.max_failed_logins,
            "block_seconds": settings.block_seconds, "provision_close_seconds": settings.provision_close_seconds,
            "telemetry_retention_days": settings.retention.telemetry_days,
            "audit_retention_days": settings.retention.audit_days,
            "retention_interval_seconds": settings.retention_interval_seconds,
            "telemetry_history": settings.telemetry_history,
        }},
    }


class BrokerStartError(Exception):
    pass


async def start_broker(settings: BrokerSettings) -> HardenedBroker:
    broker = HardenedBroker(broker_config(settings), connect_timeout=settings.connect_timeout)
    plugin = broker.plugins_manager.get_plugin(GatehousePlugin.__name__)
    broker.publish_processor = plugin
    amqtt_log = logging.getLogger("amqtt.broker")
    level = amqtt_log.level
    amqtt_log.setLevel(logging.CRITICAL)  # a failed start is reported below in one line, not as a traceback
    try:
        await broker.start()
    except BrokerError as e:
        await plugin.close()
        raise BrokerStartError(str(e.__cause__ or e)) from None
    finally:
        amqtt_log.setLevel(level)
    if not plugin.ready:  # amqtt swallows exceptions from start-up hooks (docs/amqtt.md#g10)
        await broker.shutdown()
        raise BrokerStartError("the Gatehouse plugin did not start (is the data dir initialised?)")
    return broker


def start_metrics(host: str, port: int, announce):
    """Serve /metrics (prometheus_client's HTTP server); a busy port is a start error."""
    try:
        server, bound = serve_metrics(host, port)
    except OSError as e:
        raise BrokerStartError(f"cannot listen on {host}:{port} for metrics: {e.strerror or e}") from None
    announce(f"METRICS listening on {host}:{bound}")
    return server


async def serve(settings: BrokerSettings, announce=announce) -> None:
    metrics = None
    if settings.metrics_port is not None:  # first: a busy port stops the start before any MQTT listener opens
        metrics = start_metrics(settings.host, settings.metrics_port, announce)
    try:
        broker = await start_broker(settings)
    except BaseException:
        _stop_metrics(metrics)
        raise
    announce(f"MQTT  listening on {settings.host}:{broker.listening_port('default')}")
    announce(f"MQTTS listening on {settings.host}:{broker.listening_port('tls')}")
    notify_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping the broker")
        await broker.shutdown()
        _stop_metrics(metrics)


def _stop_metrics(server) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def run(settings: BrokerSettings) -> int:
    # Clients can make the broker log at will (refused logins, malformed packets): rate limited.
    configure_logging(settings.log_format, settings.log_level, rate_limit=RateLimit())
    for noisy in ("amqtt", "transitions"):  # amqtt logs every connection at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(serve(settings))
    except BrokerStartError as e:
        print(f"Error: the broker could not start: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
