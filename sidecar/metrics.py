"""The sidecar's `/metrics` (Prometheus text format, unauthenticated as Prometheus expects) and
its request instrumentation: one latency histogram per route, and the device API's logins and
messages (gatehouse.metrics).

Requests the CoAP bridge forwards say so in `X-Gatehouse-Transport: COAP` and are counted (and
recorded in the provisioning audit trail) under the COAP transport, when they also carry the
bridge's service credentials: anyone could send the header.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gatehouse import metrics as m

from .bridge_account import from_the_bridge

TRANSPORT_HEADER = "X-Gatehouse-Transport"
metrics_api = Blueprint("metrics", __name__)

_request_seconds = m.Children(m.REQUEST_SECONDS)
_logins = m.Children(m.LOGINS)
_messages = m.Children(m.MESSAGES)
_provisioning = m.Children(m.PROVISIONING)
_long_polls_refused = m.Children(m.LONG_POLLS_REFUSED)


@metrics_api.get("/metrics")
def scrape() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def transport() -> str:
    """COAP for a request the bridge forwarded, else HTTP; decided once per request (a device
    API request asks up to three times: its login, its message, its latency)."""
    found = g.get("transport")
    if found is None:
        found = g.transport = (m.COAP if request.headers.get(TRANSPORT_HEADER) == m.COAP and from_the_bridge()
                               else m.HTTP)
    return found


def login(credentials_type: str, outcome: str) -> None:
    _logins(transport(), credentials_type, outcome).inc()


def message(direction: str, kind: str) -> None:
    _messages(transport(), direction, kind).inc()


def long_poll_refused() -> None:
    _long_polls_refused(transport()).inc()


def provisioning(strategy: str, outcome: str) -> None:
    _provisioning(transport(), strategy, outcome).inc()


class OpenPolls:
    """Devices with a long poll open now (an HTTP device waiting for updates or RPC, a CoAP
    observation the bridge feeds with one), by transport: the sidecar's connected devices."""

    def __init__(self):
        self._open: Counter[tuple[str, str]] = Counter()  # (transport, device id) -> open polls
        self._lock = threading.Lock()
        for name in (m.HTTP, m.COAP):
            m.gauge_function(m.CONNECTED_DEVICES, lambda name=name: self.devices(name), name)

    @contextlib.contextmanager
    def polling(self, device_id: str) -> Iterator[None]:
        key = (transport(), device_id)
        with self._lock:
            self._open[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key] -= 1
                if not self._open[key]:
                    del self._open[key]

    def devices(self, transport_name: str) -> int:
        with self._lock:
            return sum(1 for name, _device_id in self._open if name == transport_name)


open_polls = OpenPolls()


def instrument(app: Flask) -> None:
    """Time every request, by route (the endpoint's name; "unmatched" for a 404)."""
    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.teardown_request
    def _observe(_error) -> None:
        started = g.get("metrics_started")
        if started is not None:
            _request_seconds(transport(), request.endpoint or "unmatched").observe(time.perf_counter() - started)

    app.register_blueprint(metrics_api)
