"""`gatehouse sidecar`: the Flask app under waitress (a production WSGI server: threads, no
development server), with its broker link, until SIGINT or SIGTERM."""
from __future__ import annotations

import logging
import signal
import sys
import threading

import waitress

from gatehouse.clock import now_ms
from gatehouse.errors import is_server_unavailable
from gatehouse.logs import announce, configure_logging
from gatehouse.registry import Registry
from gatehouse.runtime.readiness import notify_ready

from .app import create_app
from .broker_link import SERVICE_ACCOUNT, BrokerLink
from .context import EXTENSION, SidecarSettings
from .mailboxes import DeviceMailboxes
from .writer import GroupCommitWriter

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 1.0
BODY_MARGIN = 1 << 20
# waitress stops accepting at 100 open connections (its default), idle keep-alive ones included:
# a hundred HTTP devices that keep their connection open locked every other client out, the CoAP
# bridge (up to 256 connections of its own) too. waitress watches its sockets with select(), which
# fails on descriptors past 1023 (and its poll() mode does not stop on SIGTERM), so the limit stays
# well below that, leaving room for each server thread's SQLite files.
CONNECTION_LIMIT = 500


def serve(settings: SidecarSettings, announce=announce) -> int:
    with Registry.open(settings.data_dir) as registry:  # a clear error now if the data dir is not there
        username, password = registry.service_credentials(SERVICE_ACCOUNT)
    link: BrokerLink | None = None
    mailboxes = DeviceMailboxes(rpc_expiry_seconds=settings.rpc_expiry_seconds,
                                on_rpc_expired=lambda device_id, request_id: link.rpc_expired(device_id, request_id))
    link = BrokerLink(settings.broker_host, settings.broker_port, username, password, mailboxes)
    writer = GroupCommitWriter(settings.data_dir, telemetry_history=settings.telemetry_history)
    app = create_app(settings, mailboxes=mailboxes, link=link, writer=writer)
    try:
        # waitress buffers a whole body before the app sees it: a body a little past the largest
        # the app accepts still reaches it (and gets its JSON 413); waitress refuses larger ones
        # (its default would buffer up to 1 GB).
        proxy = ({"trusted_proxy": settings.trusted_proxy, "trusted_proxy_headers": {"x-forwarded-for"}}
                 if settings.trusted_proxy else {})
        server = waitress.create_server(app, host=settings.host, port=settings.http_port, threads=settings.threads,
                                        ident="gatehouse", clear_untrusted_proxy_headers=True, **proxy,
                                        max_request_body_size=settings.max_payload_size + BODY_MARGIN,
                                        connection_limit=CONNECTION_LIMIT)
    except OSError as e:
        print(f"Error: the sidecar could not listen on {settings.host}:{settings.http_port}: {e.strerror}",
              file=sys.stderr, flush=True)
        return 1
    writer.start()
    link.start()
    stopping = threading.Event()

    context = app.extensions[EXTENSION]

    def store_activity() -> None:
        changes = {}
        try:
            context.observations.expire(now_ms())  # CoAP observations the bridge stopped feeding
            changes = context.activity.take_changes(now_ms())
            if changes:
                writer.call(Registry.record_activity, changes)
        except Exception as e:  # the database away for a while, say: kept for the next round, and the thread goes on
            context.activity.put_back(changes)
            if is_server_unavailable(e):
                log.warning("storing device activity failed; trying again later: %s", e)
            else:
                log.exception("storing device activity failed")

    def housekeeping() -> None:
        while not stopping.wait(HOUSEKEEPING_SECONDS):
            mailboxes.expire()
            store_activity()

    threading.Thread(target=housekeeping, name="sidecar-housekeeping", daemon=True).start()

    def stop(signum, frame) -> None:
        log.info("stopping the sidecar")
        stopping.set()
        server.close()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    announce(f"HTTP  listening on {settings.host}:{server.effective_port}")
    notify_ready()  # the socket is bound: connections wait in its backlog until run() accepts them
    try:
        server.run()
    except OSError:
        if not stopping.is_set():  # closing the server under run() ends it this way
            raise
    finally:
        stopping.set()
        link.stop()
        store_activity()
        writer.stop()
        context.close()
    return 0


def run(settings: SidecarSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" under load
    return serve(settings)
