"""`gatehouse coap`: the CoAP bridge (aiocoap, UDP only) in front of the sidecar's HTTP device API,
until SIGINT or SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiocoap
from aiocoap import resource

from gatehouse.data_dir import DataDir
from gatehouse.login_limiter import (
    DEFAULT_BLOCK_SECONDS,
    DEFAULT_MAX_FAILURES,
    LoginLimiter,
)
from gatehouse.logs import announce, configure_logging
from gatehouse.metrics import export_blocked_addresses
from gatehouse.pki import DevelopmentPki
from gatehouse.registry import Registry
from gatehouse.runtime import ports
from gatehouse.runtime.metrics_server import serve_metrics
from gatehouse.runtime.readiness import notify_ready

from .dtls import add_dtls_listener
from .forwarding import DEFAULT_TIMEOUT, HttpForwarder
from .resources import ApiV1, ApiV1WithoutFeature

log = logging.getLogger(__name__)
SERVICE_ACCOUNT = "coap"


@dataclass(frozen=True)
class CoapSettings:
    data_dir: Path
    host: str = "0.0.0.0"
    coap_port: int = ports.COAP_PORT
    coaps_port: int = ports.COAPS_PORT
    sidecar_url: str = ports.SIDECAR_URL
    sidecar_timeout: float = DEFAULT_TIMEOUT  # seconds for the sidecar's answer to a device request
    tls_cert: Path | None = None  # default: the development server certificate in the data dir
    tls_key: Path | None = None
    metrics_port: int | None = ports.COAP_METRICS_PORT  # Prometheus /metrics; 0: any free port, None: not served
    # CoAP clients' requests with unknown tokens, per UDP source address (resources.ApiV1)
    max_failed_logins: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    log_format: str = "text"
    log_level: str = "INFO"


class CoapStartError(Exception):
    pass


def build_site(api: ApiV1) -> resource.Site:
    site = resource.Site()
    site.add_resource(["api", "v1"], api)
    site.add_resource(["api", "v1"], ApiV1WithoutFeature())
    return site


async def add_secure_listeners(context: aiocoap.Context, settings: CoapSettings,
                               announce: Callable[[str], None]) -> None:
    """CoAP over DTLS on `settings.coaps_port`, serving the same site in the same context, with
    the operator's certificate or the data dir's development one; context.shutdown() closes it."""
    pki = DevelopmentPki.in_directory(DataDir.of(settings.data_dir).pki)
    try:
        dtls = await add_dtls_listener(context, (_bind_host(settings.host), settings.coaps_port),
                                       cert_file=settings.tls_cert or pki.server_cert,
                                       key_file=settings.tls_key or pki.server_key)
    except OSError as e:
        raise CoapStartError(f"cannot listen on UDP {settings.host}:{settings.coaps_port}: {e.strerror or e}") from None
    announce(f"COAPS listening on {settings.host}:{dtls.port}")


def _bind_host(host: str) -> str:
    # aiocoap's udp6 transport is an IPv6 socket: "0.0.0.0" means every address, v4 and v6.
    return "::" if host in ("0.0.0.0", "") else host


def _bound_port(context: aiocoap.Context) -> int:
    """The UDP port the udp6 transport got (the one asked for, or the OS's choice for 0)."""
    for interface in context.request_interfaces:
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(message_interface, "transport", None)
        if transport is not None:
            return transport.get_extra_info("socket").getsockname()[1]
    raise RuntimeError("aiocoap's udp6 transport was not found")


def _check_port_free(host: str, port: int) -> None:
    """aiocoap binds with SO_REUSEPORT, so a second server on a busy port would start silently and
    share the datagrams: bind a probe without it first, which a busy port refuses."""
    if port == 0:
        return
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(address)


async def start(settings: CoapSettings, api: ApiV1) -> tuple[aiocoap.Context, resource.Site, int]:
    site = build_site(api)
    try:
        _check_port_free(_bind_host(settings.host), settings.coap_port)
        context = await aiocoap.Context.create_server_context(
            site, bind=(_bind_host(settings.host), settings.coap_port), transports=["udp6"])
    except OSError as e:
        raise CoapStartError(f"cannot listen on UDP {settings.host}:{settings.coap_port}: {e.strerror or e}") from None
    return context, site, _bound_port(context)


async def serve(settings: CoapSettings, announce=announce) -> None:
    with Registry.open(settings.data_dir) as registry:  # read once: a clear error now if the data dir is not there
        credentials = registry.service_credentials(SERVICE_ACCOUNT)
    forwarder = HttpForwarder(settings.sidecar_url, credentials, default_timeout=settings.sidecar_timeout)
    limiter = LoginLimiter(settings.max_failed_logins, settings.block_seconds)
    export_blocked_addresses(limiter)
    api = ApiV1(forwarder, limiter=limiter)
    context = metrics = None
    try:
        if settings.metrics_port is not None:
            try:
                metrics, port = serve_metrics(settings.host, settings.metrics_port)
            except OSError as e:
                raise CoapStartError(f"cannot listen on {settings.host}:{settings.metrics_port} for metrics: "
                                     f"{e.strerror or e}") from None
            announce(f"METRICS listening on {settings.host}:{port}")
        context, site, port = await start(settings, api)
        announce(f"COAP  listening on {settings.host}:{port}")
        await add_secure_listeners(context, settings, announce)
        notify_ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping the CoAP bridge")
    finally:
        await api.close()
        if context is not None:
            await context.shutdown()
        await forwarder.close()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


def run(settings: CoapSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    logging.getLogger("coap-server").setLevel(logging.WARNING)  # aiocoap logs every exchange's hiccups
    try:
        asyncio.run(serve(settings))
    except CoapStartError as e:
        print(f"Error: the CoAP bridge could not start: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
